/**
 * The guest kernel's command line, for every backend: the image's own
 * arguments, then the agent's `mvirt.*` keys. Passed to the hypervisor as one
 * argument or JSON string (never through a shell), so only the kernel's own
 * splitting on spaces matters here.
 */
import { CMDLINE_KEYS } from '../../protocol/agent.js';
import { MvirtError } from '../../protocol/errors.js';
import type { LaunchSpec } from './types.js';

const CMDLINE_KEY = /^mvirt\.[a-z][a-z0-9_]{0,31}$/;
// Kernel parameters are split on spaces; quotes and control characters would
// let a value smuggle in further parameters.
const CMDLINE_VALUE = /^[\x21\x23-\x7e]{0,256}$/;

/**
 * spec.cmdline + the channel keys the agent needs + spec.agentArgs. agentArgs
 * keys are full parameter names (`mvirt.root`…); the backend owns `mvirt.vm`
 * and `mvirt.channel`.
 */
export function buildKernelCmdline(spec: LaunchSpec): string {
  const parts = [spec.cmdline.trim()];
  parts.push(`${CMDLINE_KEYS.vmId}=${spec.vmId}`, `${CMDLINE_KEYS.channel}=${spec.channel}`);
  for (const [key, value] of Object.entries(spec.agentArgs)) {
    if (!CMDLINE_KEY.test(key) || key === CMDLINE_KEYS.vmId || key === CMDLINE_KEYS.channel) {
      throw new MvirtError(
        'INVALID_PARAMS',
        `agent argument ${JSON.stringify(key)} is not allowed`,
      );
    }
    if (!CMDLINE_VALUE.test(value)) {
      throw new MvirtError('INVALID_PARAMS', `agent argument ${key} has an unsafe value`);
    }
    parts.push(`${key}=${value}`);
  }
  if (!CMDLINE_VALUE.test(spec.vmId)) {
    throw new MvirtError('INVALID_PARAMS', 'vm id is not safe on a kernel command line');
  }
  return parts.filter(Boolean).join(' ');
}
