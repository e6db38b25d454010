/**
 * The hypervisor backends compiled into mvirtd, from the registry in
 * host/hypervisors/ (which owns their options and probing).
 */
import type { Logger } from 'pino';
import { createHypervisors } from '../hypervisors/index.js';
import type { Hypervisor } from '../hypervisors/types.js';
import type { MvirtLogger } from '../log.js';

export function loadBackends(log: MvirtLogger): Hypervisor[] {
  // The registry takes a plain pino Logger; ours only adds the `audit` level.
  return [...createHypervisors({}, log as unknown as Logger).values()];
}
