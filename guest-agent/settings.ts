/**
 * Agent settings: the kernel command line (`mvirt.*` keys, set by the host
 * when it boots the VM) with environment overrides for tests and debugging.
 * Secrets never come from here: the TCP token is read from a file.
 */
import {
  CHANNELS,
  CMDLINE_KEYS,
  VIRTIO_PORT_NAME,
  VSOCK_HOST_CID,
  VSOCK_PORT,
  type Channel,
} from '../protocol/agent.js';
import { nameProblem } from '../protocol/topics.js';
import type { ChannelSpec } from './platform/types.js';

export interface Settings {
  vmId: string;
  /** `<prefix>/<hostId>`: the topic root every agent topic hangs below. */
  root: string;
  channel: ChannelSpec;
  telemetryMs: number;
  /** File holding the per-VM MQTT password (TCP channel only). */
  tokenPath: string;
  /** File where init wrote /proc/uptime when it started. */
  initUptimePath: string;
}

export const DEFAULT_TELEMETRY_MS = 5000;
export const DEFAULT_TOKEN_PATH = '/run/mvirt/token';
export const DEFAULT_INIT_UPTIME_PATH = '/run/mvirt/init-uptime';
export const DEFAULT_MQTT_PORT = 1883;

/** Environment variables that override the command line (same names, upper case). */
export const ENV_KEYS = {
  vmId: 'MVIRT_VM',
  channel: 'MVIRT_CHANNEL',
  root: 'MVIRT_ROOT',
  addr: 'MVIRT_ADDR',
  telemetryMs: 'MVIRT_TELEMETRY_MS',
  tokenPath: 'MVIRT_TOKEN_FILE',
  initUptimePath: 'MVIRT_INIT_UPTIME_FILE',
  device: 'MVIRT_DEVICE',
} as const;

export class SettingsError extends Error {
  override name = 'SettingsError';
}

/** `key=value` words of a kernel command line; later words win, like the kernel's own parsing. */
export function parseCmdline(cmdline: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const word of cmdline.trim().split(/\s+/)) {
    const eq = word.indexOf('=');
    if (eq > 0) out.set(word.slice(0, eq), word.slice(eq + 1).replace(/^"(.*)"$/, '$1'));
  }
  return out;
}

function parseAddr(addr: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d{1,5}))?$/.exec(addr);
  const host = m?.[1] ?? m?.[2];
  const port = m?.[3] === undefined ? DEFAULT_MQTT_PORT : Number(m[3]);
  if (!host || port < 1 || port > 65535) {
    throw new SettingsError(`${CMDLINE_KEYS.addr}=${addr}: expected host[:port]`);
  }
  return { host, port };
}

export function resolveSettings(cmdline: string, env: NodeJS.ProcessEnv): Settings {
  const cl = parseCmdline(cmdline);
  const get = (k: keyof typeof CMDLINE_KEYS & keyof typeof ENV_KEYS): string | undefined => {
    const v = env[ENV_KEYS[k]];
    return v !== undefined && v !== '' ? v : cl.get(CMDLINE_KEYS[k]);
  };

  const vmId = get('vmId');
  if (!vmId) throw new SettingsError(`missing ${CMDLINE_KEYS.vmId}= on the kernel command line`);
  const bad = nameProblem(vmId);
  if (bad) throw new SettingsError(`${CMDLINE_KEYS.vmId}=${vmId}: ${bad}`);

  const root = get('root');
  if (!root) throw new SettingsError(`missing ${CMDLINE_KEYS.root}= on the kernel command line`);
  if (/[+#\s]/.test(root) || root.startsWith('/') || root.endsWith('/')) {
    throw new SettingsError(`${CMDLINE_KEYS.root}=${root}: not a topic prefix like mvirt/host1`);
  }

  const kind = (get('channel') ?? 'virtio-serial') as Channel;
  if (!(CHANNELS as readonly string[]).includes(kind)) {
    throw new SettingsError(
      `${CMDLINE_KEYS.channel}=${kind}: expected one of ${CHANNELS.join(', ')}`,
    );
  }
  let channel: ChannelSpec;
  if (kind === 'tcp') {
    const addr = get('addr');
    if (!addr)
      throw new SettingsError(`${CMDLINE_KEYS.channel}=tcp needs ${CMDLINE_KEYS.addr}=host[:port]`);
    channel = { kind, ...parseAddr(addr) };
  } else if (kind === 'vsock') {
    channel = { kind, cid: VSOCK_HOST_CID, port: VSOCK_PORT };
  } else {
    channel = { kind, portName: VIRTIO_PORT_NAME, device: env[ENV_KEYS.device] || undefined };
  }

  const tms = get('telemetryMs');
  const telemetryMs = tms === undefined ? DEFAULT_TELEMETRY_MS : Number(tms);
  if (!Number.isInteger(telemetryMs) || telemetryMs < 100) {
    throw new SettingsError(`${CMDLINE_KEYS.telemetryMs}=${tms}: expected an integer ≥ 100`);
  }

  return {
    vmId,
    root,
    channel,
    telemetryMs,
    tokenPath: env[ENV_KEYS.tokenPath] || DEFAULT_TOKEN_PATH,
    initUptimePath: env[ENV_KEYS.initUptimePath] || DEFAULT_INIT_UPTIME_PATH,
  };
}
