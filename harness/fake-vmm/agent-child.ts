/**
 * The guest of a fake VMM: the real agent core (guest-agent/agent.ts) in a
 * child process of the fake, on the real Linux platform for its jobs, whose
 * vsock channel is the hybrid vsock: where a real guest dials CID 2 port 1024
 * and the VMM connects to `<uds>_1024`, this process connects there itself,
 * through the guest's relay helper (guest-agent/platform/vsock.ts).
 * What the guest asks of its machine (power off, reboot) goes to the fake
 * over IPC; the fake's death (IPC gone) is the guest's death.
 *
 * Environment: FAKE_VM, FAKE_ROOT (the mvirt.* values of the kernel command
 * line), FAKE_VSOCK_PATH (`<uds>_1024`), FAKE_CMDLINE, FAKE_VMM_PID.
 */
import { createAgent } from '../../guest-agent/agent.js';
import { createLinuxPlatform } from '../../guest-agent/platform/linux.js';
import { openRelay } from '../../guest-agent/platform/vsock.js';
import type { Platform } from '../../guest-agent/platform/types.js';
import type { Settings } from '../../guest-agent/settings.js';
import { TEST_AGENT_OPTIONS } from '../agent-options.js';
import { FAKE_TTY_DIR, launcherForTests, vsockHelper } from '../vsock-helper.js';

const env = (k: string): string => {
  const v = process.env[k];
  if (!v) throw new Error(`agent-child: ${k} is not set`);
  return v;
};
const vmId = env('FAKE_VM');
const root = env('FAKE_ROOT');
const vsockPath = env('FAKE_VSOCK_PATH');
const cmdline = process.env.FAKE_CMDLINE ?? '';
const helper = await vsockHelper();

const linux = createLinuxPlatform({
  env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
  launcher: launcherForTests(),
});
const settings: Settings = {
  vmId,
  root,
  channel: { kind: 'vsock', cid: 2, port: 1024 },
  telemetryMs: 3_600_000,
  tokenPath: '/run/mvirt/token',
  initUptimePath: `/fake-guest/${vmId}/init-uptime`,
};
const pgids = new Set<number>();
const killJobs = () => {
  for (const g of pgids) {
    try {
      process.kill(-g, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
};

const platform: Platform = {
  spawn(req) {
    const p = linux.spawn(req);
    p.on('spawn', () => p.pid !== undefined && pgids.add(p.pid));
    return p;
  },
  // As the other fake guests: never the host's cgroups, so no per-job limits.
  limitedGroup: () =>
    Promise.reject(
      new Error('per-job limits need cgroup v2 with memory groups, which this guest lacks'),
    ),
  killGroup: (pgid, sig) => linux.killGroup(pgid, sig),
  readText: async (p) => (p === settings.initUptimePath ? '0.10 0.05\n' : linux.readText(p)),
  statfs: (p) => linux.statfs(p),
  listDir: async () => [],
  cmdline: async () => cmdline,
  uname: () => ({ release: '6.1.0-fake-vmm', hostname: vmId }),
  // The hybrid vsock's guest-initiated direction, as the VMM does it for a
  // real guest, dialled through the µOS's own helper (its unix mode).
  openChannel: () => openRelay(helper, [`unix:${vsockPath}`]),
  async power(action) {
    killJobs();
    process.send?.({ power: action });
  },
  readIdentity: async () => null,
  setClock: async () => 0,
  mixEntropy: async () => undefined,
  setHostname: async () => undefined,
  configureNic: async () => undefined,
  // No mvirt-pty here: a tty job fails to start, as in a guest without it.
  tty: { helper: '/nonexistent/mvirt-pty', sizeDir: FAKE_TTY_DIR },
  writeText: (file, text) => linux.writeText(file, text),
  removeFile: (file) => linux.removeFile(file),
  jobEnv: () => linux.jobEnv(),
  clock: linux.clock,
};

const agent = createAgent(platform, settings, {
  ...TEST_AGENT_OPTIONS,
  powerReplyWaitMs: 3000,
  console: (line) => process.stderr.write(`fake-agent: ${line}\n`),
});
// The VM is gone with its VMM: the guest's processes go too.
const die = () => {
  killJobs();
  process.exit(0);
};
process.on('disconnect', die);
// A VMM killed while this process was still loading its modules disconnected
// before the listener above existed; and a reparented process has lost its VMM.
// From the VMM, not process.ppid: a VMM that died while this process loaded has made it 1 already.
const vmm = Number(env('FAKE_VMM_PID'));
if (!process.connected) die();
setInterval(() => process.ppid !== vmm && die(), 500).unref();
void agent.start();
