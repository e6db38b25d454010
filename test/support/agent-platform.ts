/**
 * An in-memory Platform for agent unit tests: /proc-like files from a map, a
 * settable clock, recorded power calls, and a channel that is one side of an
 * in-memory duplex pair whose other side the test hands to a real aedes
 * broker. Processes are real (the test host is Linux): spawn and killGroup
 * are the Linux platform's.
 */
import type { ImageRuntime } from '../../protocol/image.js';
import { EventEmitter } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { createLinuxPlatform } from '../../guest-agent/platform/linux.js';
import { launcherForTests } from '../../harness/vsock-helper.js';
import type {
  ChannelSpec,
  NicConfig,
  Platform,
  PowerAction,
} from '../../guest-agent/platform/types.js';
import { duplexPair } from './agent-duplex.js';
import {
  encodeIdentity,
  type Identity,
  type JobLimits,
  type JobUsage,
} from '../../protocol/agent.js';

export interface FakePlatform extends Platform {
  /** An imported image's defaults (jobs spawn on the host all the same). */
  image: ImageRuntime | null;
  files: Map<string, string>;
  powerCalls: PowerAction[];
  /** While false, openChannel rejects (the host is away). */
  channelAvailable: boolean;
  /** The agent's side of the current channel. */
  current: Duplex | null;
  channelSpecs: ChannelSpec[];
  uptime: number;
  /** 'attempt' (spec), 'channel' (hostSide), 'read' (path), 'power' (action), 'identity', 'spawn' (proc). */
  events: EventEmitter;
  /** Job groups by job id: set oomKills to play the kernel's OOM killer. */
  groups: Map<string, FakeJobGroup>;
  /** The fw_cfg identity file (null: none); an Error is thrown by readIdentity. */
  identity: Buffer | Error | null;
  /** A fixed wall clock (ms) when set; setClock sets it. Null: the real clock. */
  wallMs: number | null;
  /** Every setClock target; entropy mixed; NICs configured. */
  clockSets: number[];
  entropy: Buffer[];
  nics: NicConfig[];
  hostname: string;
  /** Make the next calls of these fail with this message. */
  failures: { clock?: string; entropy?: string; nic?: string; limits?: string };
}

export interface FakeJobGroup {
  oomKills: number;
  removed: boolean;
  /** What the kernel would report as the job ends (null: unreadable). */
  usage: JobUsage | null;
  /** job.run {limits}, for a limited group. */
  limits?: JobLimits;
  /** The file the job writes its `0` into (a limited group's cgroup.procs) … */
  procs?: string;
  /** … and what it held when the group was removed. */
  entered?: string;
}

export const PROC_FILES: Record<string, string> = {
  '/proc/uptime': '12.50 20.00\n',
  '/proc/stat':
    'cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n',
  '/proc/meminfo':
    'MemTotal:         131072 kB\nMemFree:           65536 kB\nMemAvailable:      98304 kB\n',
  '/proc/loadavg': '0.50 0.25 0.10 1/42 123\n',
  '/proc/net/dev':
    'Inter-|   Receive                                                |  Transmit\n' +
    ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n' +
    '    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n' +
    '  eth0:    2000      20    0    0    0     0          0         0     3000      30    0    0    0     0       0          0\n',
  '/proc/mounts':
    'rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n/dev/vda /mnt/os squashfs ro 0 0\ntmpfs /run tmpfs rw 0 0\n',
  '/proc/vmstat': 'nr_free_pages 1000\noom_kill 0\n',
  '/run/mvirt/init-uptime': '1.25 1.00\n',
};

/** Entropy of test identities (fw_cfg), before base64. */
export const IDENTITY_ENTROPY = Buffer.from('0123456789abcdef0123456789abcdef');

/** A valid identity (the harness's VM at generation 0 unless told otherwise). */
export const identity = (o: Partial<Identity> = {}): Identity => ({
  v: 1,
  generation: 0,
  vmId: 'vm-test',
  hostname: 'vm-test',
  entropy: IDENTITY_ENTROPY.toString('base64'),
  ...o,
});

/** The fw_cfg file of an identity, as the guest reads it. */
export const identityFile = (o: Partial<Identity> = {}): Buffer =>
  Buffer.from(encodeIdentity(identity(o)));

export function createFakePlatform(onChannel: (hostSide: Duplex) => void): FakePlatform {
  const linux = createLinuxPlatform({
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    image: null,
    launcher: launcherForTests(),
  });
  const events = new EventEmitter();
  const p: FakePlatform = {
    files: new Map(Object.entries(PROC_FILES)),
    powerCalls: [],
    channelAvailable: true,
    current: null,
    channelSpecs: [],
    uptime: 12.5,
    events,
    groups: new Map(),
    identity: null,
    wallMs: null,
    clockSets: [],
    entropy: [],
    nics: [],
    image: null,
    hostname: 'guest',
    failures: {},
    spawn(req) {
      const proc = linux.spawn(req);
      events.emit('spawn', proc);
      return proc;
    },
    async limitedGroup(jobId, limits) {
      if (p.failures.limits) throw new Error(p.failures.limits);
      const procs = path.join(
        mkdtempSync(path.join(tmpdir(), 'mvirt-fake-group-')),
        'cgroup.procs',
      );
      const g: FakeJobGroup = {
        oomKills: 0,
        removed: false,
        usage: null,
        limits,
        procs,
      };
      p.groups.set(jobId, g);
      return {
        procs,
        oomKills: async () => g.oomKills,
        usage: async () => g.usage,
        remove: async () => {
          g.removed = true;
          g.entered = existsSync(procs) ? readFileSync(procs, 'utf8') : '';
          rmSync(path.dirname(procs), { recursive: true, force: true });
        },
      };
    },
    killGroup: (pgid, sig) => linux.killGroup(pgid, sig),
    async listDir(dir) {
      const names = new Set<string>();
      for (const f of p.files.keys()) {
        if (f.startsWith(`${dir}/`)) names.add(f.slice(dir.length + 1).split('/')[0]!);
      }
      return [...names];
    },
    async readText(path) {
      events.emit('read', path);
      return p.files.get(path) ?? null;
    },
    async statfs(path) {
      return path === '/' || path === '/mnt/os' ? { totalBytes: 1000, usedBytes: 400 } : null;
    },
    async cmdline() {
      return '';
    },
    uname: () => ({ release: '6.1.0-test', hostname: p.hostname }),
    async openChannel(spec) {
      p.channelSpecs.push(spec);
      events.emit('attempt', spec);
      if (!p.channelAvailable) throw new Error('host not connected (test)');
      const [guest, host] = duplexPair();
      p.current = guest;
      onChannel(host);
      events.emit('channel', host);
      return guest;
    },
    async power(action) {
      p.powerCalls.push(action);
      events.emit('power', action);
    },
    async readIdentity() {
      events.emit('identity');
      if (p.identity instanceof Error) throw p.identity;
      return p.identity;
    },
    async setClock(ms) {
      if (p.failures.clock) throw new Error(p.failures.clock);
      p.clockSets.push(ms);
      p.wallMs = ms;
      return 0;
    },
    async mixEntropy(bytes) {
      if (p.failures.entropy) throw new Error(p.failures.entropy);
      p.entropy.push(Buffer.from(bytes));
    },
    async setHostname(name) {
      p.hostname = name;
    },
    async configureNic(net) {
      if (p.failures.nic) throw new Error(p.failures.nic);
      p.nics.push(net);
    },
    // A test that runs tty jobs builds the helper and points this at it.
    tty: { helper: '/nonexistent/mvirt-pty', sizeDir: path.join(tmpdir(), 'mvirt-fake-tty') },
    writeText: (file, text) => linux.writeText(file, text),
    removeFile: (file) => linux.removeFile(file),
    fs: linux.fs,
    jobEnv: () => linux.jobEnv(),
    clock: {
      now: () => p.wallMs ?? Date.now(),
      uptimeS: () => p.uptime,
      processStartS: () => 2.5,
    },
  };
  return p;
}
