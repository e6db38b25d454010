/**
 * A fake hypervisor backend for daemon tests that must not need QEMU: each
 * "VM" is a real child process (so pids, start times, exit and recovery are
 * real) and its agent channel is a real unix socket on which an in-process
 * fake agent speaks MQTT through the daemon's broker, like mvirt-agent does.
 *
 * Agent mode 'real' runs the real agent core (guest-agent/agent.ts) in the
 * test process on the real Linux platform (jobs are real processes in their
 * own process groups, signals are real) except for what makes it a guest:
 * its channel is the next socket the daemon opened to the VM's agent socket,
 * a power-off ends the fake guest process (exit 0), and the guest's death
 * stops the agent and SIGKILLs every process group its jobs started.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import { createAgent, type Agent, type AgentOptions } from '../guest-agent/agent.js';
import { createLinuxPlatform } from '../guest-agent/platform/linux.js';
import type { Platform, PowerAction } from '../guest-agent/platform/types.js';
import type { Settings } from '../guest-agent/settings.js';
import type {
  ExitInfo,
  Hypervisor,
  HypervisorCapabilities,
  LaunchSpec,
  RunningVm,
  VmRuntime,
} from '../host/hypervisors/types.js';
import { procStartTime } from '../host/hypervisors/proc.js';
import { CMDLINE_KEYS } from '../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../protocol/codec.js';
import { greetAsAgent } from './agent-greeting.js';
import { TEST_AGENT_OPTIONS } from './agent-options.js';

export type AgentMode = 'ready' | 'silent' | 'garbage' | 'real';

export interface FakeOptions {
  name?: string;
  /** What the fake agent does once connected ('real': the real agent core, see above). */
  agent?: AgentMode;
  /** Agent options for mode 'real' (merged over quick test defaults). */
  realAgent?: Partial<AgentOptions>;
  /** Mode 'real': the guest takes this long to start its agent (a slow boot). */
  realAgentStartDelayMs?: number;
  /** Make launch throw. */
  failLaunch?: boolean;
  available?: boolean;
  /** Make attach throw as if the process were ours but its control socket dead. */
  failAttach?: boolean;
  /** Capabilities other than the defaults below (a backend that lacks some). */
  capabilities?: Partial<HypervisorCapabilities>;
}

// The guest "program": exits 0 on SIGHUP (ACPI/agent power-off) and SIGTERM.
const GUEST = `process.on('SIGHUP',()=>process.exit(0));process.on('SIGTERM',()=>process.exit(0));setInterval(()=>{},1e9);process.stdout.write('up');`;

interface FakeVm {
  server: net.Server;
  sockets: Set<net.Socket>;
  agents: Set<MqttClient>;
  root: string;
  vmId: string;
  pid: number;
  /** Mode 'real': the running agent instance (replaced on a guest reboot). */
  guest?: RealGuest;
  /** Mode 'real': sockets the daemon opened that no agent session took yet. */
  accepted: net.Socket[];
  /** Mode 'real': the telemetry interval the daemon put on the "kernel command line". */
  telemetryMs?: number;
}

/** One boot's worth of the real agent inside a fake VM. */
export interface RealGuest {
  readonly vmId: string;
  readonly agent: Agent;
  /** Process groups of the jobs this guest spawned (pgid = the job's pid). */
  readonly pgids: Set<number>;
  dead: boolean;
  /** What the agent asked the "init" for (power requests from the host). */
  readonly powerCalls: PowerAction[];
  /** The agent waits in openChannel for the daemon's next connection. */
  waiter: ((s: net.Socket) => void) | null;
  /** Publish a raw up message through this guest's channel (as a hostile guest would). */
  publishUp(kind: string, payload: Buffer, topicVmId?: string): void;
  /** Break the channel (both ends see it close); the VM and its jobs live on. */
  dropChannel(): void;
  /**
   * false: break the channel and keep the agent from getting a new one (the
   * host's connections wait); true: let it connect again. Jobs keep running.
   */
  setOnline(online: boolean): void;
  readonly online: boolean;
}

/** A job process a real-mode guest started. */
export interface SpawnedJob {
  vmId: string;
  pid: number;
  argv: string[];
}

/** Fake VMs by agent socket path: survives a daemon restart inside one test process. */
const vmsBySocket = new Map<string, FakeVm>();

export interface FakeHypervisor extends Hypervisor {
  options: FakeOptions;
  launched: number[];
  /** Messages the fake agents received on their down topics (not in mode 'real'). */
  received: { vmId: string; kind: string; msg: unknown }[];
  /** Mode 'real': every job process spawned, in order. */
  spawned: SpawnedJob[];
  /** Mode 'real': the current agent instance of each VM ever launched, by VM id. */
  guests: Map<string, RealGuest>;
  /** Pids that dispose() ended (recovery of leftovers that are not re-attached). */
  disposed: number[];
}

// ------------------------------------------------------------------ mode 'real'

/** Members of process group `pgid` that are still alive (zombies are dead: excluded). */
export function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${e}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // pid (comm) state ppid pgrp session …; comm may contain spaces and parens.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (f[0] !== 'Z' && f[0] !== 'X' && Number(f[2]) === pgid) out.push(Number(e));
  }
  return out;
}

/**
 * SIGKILL a job's process group, but only while it is still one of ours: its
 * members lead no other session than the job's (setsid made pgid = sid = the
 * job's pid), so a recycled pid of an unrelated process is never signalled.
 */
function killJobGroup(pgid: number): void {
  const members = groupMembers(pgid);
  if (members.length === 0) return; // gone: its pgid may be someone else's by now
  for (const pid of members) {
    let sid = -1;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      sid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
    } catch {
      continue;
    }
    if (sid !== pgid) return;
  }
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

const REAL_AGENT_DEFAULTS: AgentOptions = {
  ...TEST_AGENT_OPTIONS,
  powerReplyWaitMs: 3000,
  console: process.env.MVIRT_TEST_LOG
    ? (line) => process.stderr.write(`fake-agent: ${line}\n`)
    : () => undefined,
};

/** Boot the real agent core for `vm` (at launch, and again after each guest reboot). */
function bootRealGuest(hv: FakeHypervisor, vm: FakeVm): RealGuest {
  const linux = createLinuxPlatform({ env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  const settings: Settings = {
    vmId: vm.vmId,
    root: vm.root,
    channel: { kind: 'virtio-serial', portName: 'mvirt.agent' },
    // Quiet unless the daemon asks for telemetry (mvirtd --telemetry-interval-ms).
    telemetryMs: vm.telemetryMs ?? 3_600_000,
    tokenPath: '/run/mvirt/token',
    initUptimePath: `/fake-guest/${vm.vmId}/init-uptime`,
  };
  const pgids = new Set<number>();
  // The agent is made below, from a platform that needs this guest's state.
  const g: Omit<RealGuest, 'agent'> & { agent?: Agent } = {
    vmId: vm.vmId,
    pgids,
    dead: false,
    powerCalls: [],
    waiter: null,
    online: true,
    publishUp(kind, payload, topicVmId = vm.vmId) {
      g.agent!.outbox.push('output', `${vm.root}/agent/${topicVmId}/up/${kind}`, payload);
    },
    dropChannel() {
      for (const s of vm.sockets) s.destroy();
    },
    setOnline(online) {
      (g as { online: boolean }).online = online;
      if (!online) return g.dropChannel();
      while (g.waiter && vm.accepted.length > 0) {
        const s = vm.accepted.shift()!;
        if (!s.destroyed) g.waiter(s);
      }
    },
  };
  const platform: Platform = {
    spawn(req) {
      if (g.dead) throw new Error('the VM is gone');
      const p = linux.spawn(req);
      p.on('spawn', () => {
        if (p.pid === undefined) return;
        pgids.add(p.pid);
        hv.spawned.push({ vmId: vm.vmId, pid: p.pid, argv: [...req.argv] });
        // Started after the guest died (the spawn was in flight): it dies too.
        if (g.dead) killJobGroup(p.pid);
      });
      return p;
    },
    // Never the host's cgroups: fake guests' jobs run ungrouped.
    jobGroup: async () => null,
    killGroup: (pgid, sig) => linux.killGroup(pgid, sig),
    readText: async (p) => (p === settings.initUptimePath ? '0.10 0.05\n' : linux.readText(p)),
    statfs: (p) => linux.statfs(p),
    // No disks: the test host's /sys/block is not the guest's.
    listDir: async () => [],
    cmdline: async () => `mvirt.vm=${vm.vmId} mvirt.root=${vm.root} mvirt.channel=virtio-serial`,
    uname: () => ({ release: '6.1.0-fake-real', hostname: vm.vmId }),
    openChannel: () =>
      new Promise<Duplex>((resolve, reject) => {
        if (g.dead) return reject(new Error('the VM is gone'));
        for (let s = g.online ? vm.accepted.shift() : undefined; s; s = vm.accepted.shift()) {
          if (!s.destroyed) return resolve(s);
        }
        // Like a virtio-serial port: the guest's session starts when the host connects.
        g.waiter = (s) => {
          g.waiter = null;
          resolve(s);
        };
      }),
    async power(action: PowerAction) {
      g.powerCalls.push(action);
      if (action === 'reboot') rebootRealGuest(hv, vm);
      else signalGuest(vm.pid, 'SIGHUP'); // the fake guest exits 0: a poweroff
    },
    jobEnv: () => linux.jobEnv(),
    clock: linux.clock,
  };
  const agent = createAgent(platform, settings, {
    ...REAL_AGENT_DEFAULTS,
    ...hv.options.realAgent,
  });
  const guest: RealGuest = Object.assign(g, { agent });
  vm.guest = guest;
  hv.guests.set(vm.vmId, guest);
  const delay = hv.options.realAgentStartDelayMs ?? 0;
  // unref: a guest that never got to start its agent does not keep the test alive.
  if (delay > 0) setTimeout(() => void (g.dead || agent.start()), delay).unref();
  else void agent.start();
  return guest;
}

/** A real-mode guest goes away (VM death or reset): its processes die with it. */
function endRealGuest(vm: FakeVm): void {
  const g = vm.guest;
  if (!g || g.dead) return;
  g.dead = true;
  g.waiter = null;
  for (const s of vm.sockets) s.destroy();
  vm.accepted.length = 0;
  for (const pgid of g.pgids) killJobGroup(pgid);
  void g.agent.stop();
}

function rebootRealGuest(hv: FakeHypervisor, vm: FakeVm): void {
  endRealGuest(vm);
  bootRealGuest(hv, vm);
}

function signalGuest(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

function startAgent(
  vm: FakeVm,
  sock: net.Socket,
  mode: AgentMode,
  onDown: FakeHypervisor['received'],
): void {
  const up = (kind: string) => `${vm.root}/agent/${vm.vmId}/up/${kind}`;
  const client = new MqttClient(() => sock, {
    clientId: `agent-${vm.vmId}`,
    protocolVersion: 4,
    reconnectPeriod: 0,
  });
  vm.agents.add(client);
  client.on('error', () => undefined);
  client.on('close', () => vm.agents.delete(client));
  client.on('connect', () => {
    if (mode === 'silent') return;
    if (mode === 'garbage') {
      client.publish(up('hello'), Buffer.from([0xff, 0x00, 0x13]));
      client.publish(up('hello'), encodeCbor({ protocol: 'x' }));
      client.publish(up('ready'), encodeCbor({ at: 1, extra: true }));
      return;
    }
    greetAsAgent(client, {
      root: vm.root,
      vmId: vm.vmId,
      name: 'fake',
      boot: { initS: 0.1, agentStartS: 0.2, connectedS: 0.3 },
      readyAt: 0.4,
    });
  });
  client.on('message', (topic, payload) => {
    const kind = topic.split('/').pop()!;
    const msg = decodeCbor(payload) as { id?: string; action?: string };
    onDown.push({ vmId: vm.vmId, kind, msg });
    if (kind === 'power' && msg.id) {
      client.publish(up('reply'), encodeCbor({ id: msg.id, ok: true }), () => {
        if (msg.action === 'poweroff') {
          try {
            process.kill(vm.pid, 'SIGHUP');
          } catch {
            /* gone */
          }
        }
      });
    }
  });
}

function running(
  hv: FakeHypervisor,
  vm: FakeVm,
  runtime: VmRuntime,
  exited: Promise<ExitInfo>,
): RunningVm {
  const sig = (s: NodeJS.Signals): void => {
    try {
      process.kill(runtime.pid, s);
    } catch {
      /* gone */
    }
  };
  const dropAgents = (): void => {
    for (const s of vm.sockets) s.destroy();
  };
  // The "guest" restarts: a new agent session follows (in mode 'real' a new agent).
  const reboot = (): void => {
    if (vm.guest) rebootRealGuest(hv, vm);
    else dropAgents();
  };
  void exited.then(() => {
    dropAgents();
    vm.server.close();
    vmsBySocket.delete(runtime.sockets.agent!);
  });
  return {
    runtime,
    pause: async () => sig('SIGSTOP'),
    resume: async () => sig('SIGCONT'),
    reboot: async () => reboot(),
    powerdown: async () => sig('SIGHUP'),
    status: async () => 'running',
    connectAgent: () =>
      new Promise<Duplex>((resolve, reject) => {
        const s = net.connect(runtime.sockets.agent!);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      }),
    // The guest's serial console as a tty in echo mode: what goes in comes back out.
    connectConsole: async () =>
      new Duplex({
        read() {},
        write(chunk: Buffer, _enc, cb) {
          this.push(chunk);
          cb();
        },
      }),
    signal: sig,
    exited,
    detach: async () => undefined,
  };
}

export function createFakeHypervisor(options: FakeOptions = {}): FakeHypervisor {
  const hv: FakeHypervisor = {
    name: options.name ?? 'qemu',
    options,
    launched: [],
    received: [],
    spawned: [],
    guests: new Map(),
    disposed: [],
    capabilities: {
      channels: ['virtio-serial'],
      pause: true,
      reboot: true,
      gracefulShutdown: true,
      console: true,
      directKernelBoot: true,
      // Fake VMs have no block devices to plug: vm.attachDisk on a running one is refused.
      hotplugDisks: false,
      ...options.capabilities,
    },
    // A dry run shows the fake guest's argv; it has no control commands.
    plans: {
      launch: (spec) =>
        Promise.resolve({
          argv: [process.execPath, '-e', GUEST],
          files: [path.join(spec.dir, 'agent.sock')],
        }),
      control: () => [],
      attachDisk: () => [],
      detachDisk: () => [],
    },
    probe: async () =>
      hv.options.available === false
        ? { available: false, accel: null, reason: 'disabled in the test' }
        : { available: true, accel: 'fake' },

    async launch(spec: LaunchSpec, _log: Logger): Promise<RunningVm> {
      if (hv.options.failLaunch) throw new Error('fake launch failure');
      const child = spawn(process.execPath, ['-e', GUEST], {
        stdio: ['ignore', 'pipe', 'ignore'],
        detached: true,
      });
      child.unref();
      // Its signal handlers are installed once it says 'up'.
      await new Promise<void>((resolve, reject) => {
        child.stdout!.once('data', () => resolve());
        child.once('error', reject);
      });
      child.stdout!.destroy();
      const pid = child.pid!;
      hv.launched.push(pid);
      const exited = new Promise<ExitInfo>((resolve) =>
        child.once('exit', (code, signal) =>
          resolve({ code, signal, reason: signal ? `killed by ${signal}` : `exited ${code}` }),
        ),
      );
      // User mode: connect to passt as QEMU's stream netdev does, for the
      // VM's life. passt runs with --one-off and leaves when that connection
      // closes; without it every started fake VM left a passt behind.
      if (spec.network.mode === 'user' && spec.network.socket !== undefined) {
        const nic = net.connect(spec.network.socket);
        nic.on('error', () => undefined);
        child.once('exit', () => nic.destroy());
      }
      const sockPath = path.join(spec.dir, 'agent.sock');
      const vm: FakeVm = {
        server: net.createServer(),
        sockets: new Set(),
        agents: new Set(),
        root: spec.agentArgs[CMDLINE_KEYS.root]!,
        vmId: spec.vmId,
        pid,
        accepted: [],
      };
      const tms = spec.agentArgs[CMDLINE_KEYS.telemetryMs];
      if (tms !== undefined) vm.telemetryMs = Number(tms);
      const mode = hv.options.agent ?? 'ready';
      // Runs within the exit event, before anything awaiting `exited`: the
      // guest's processes are gone before the daemon hears of the VM's death.
      child.once('exit', () => endRealGuest(vm));
      vm.server.on('connection', (s) => {
        vm.sockets.add(s);
        s.on('close', () => vm.sockets.delete(s));
        s.on('error', () => undefined);
        if (mode !== 'real') return startAgent(vm, s, mode, hv.received);
        const g = vm.guest;
        if (!g || g.dead) return void s.destroy();
        if (g.waiter && g.online) g.waiter(s);
        else vm.accepted.push(s);
      });
      await new Promise<void>((resolve, reject) => {
        const failed = (err: Error): void => {
          child.kill('SIGKILL'); // a failed launch leaves no process behind
          reject(err);
        };
        vm.server.once('error', failed);
        vm.server.listen(sockPath, () => {
          vm.server.off('error', failed);
          resolve();
        });
      });
      vmsBySocket.set(sockPath, vm);
      if (mode === 'real' && child.exitCode === null && child.signalCode === null)
        bootRealGuest(hv, vm);
      const runtime: VmRuntime = {
        backend: hv.name,
        pid,
        startTime: procStartTime(pid)!,
        accel: 'fake',
        sockets: { agent: sockPath },
      };
      return running(hv, vm, runtime, exited);
    },

    // Ours: a process this test process launched, still the same one.
    identify: (runtime: VmRuntime) =>
      procStartTime(runtime.pid) !== runtime.startTime
        ? 'gone'
        : vmsBySocket.has(runtime.sockets.agent ?? '')
          ? 'ours'
          : 'not-ours',

    async dispose(runtime: VmRuntime, dir: string): Promise<void> {
      if (hv.identify(runtime, dir) !== 'ours') return;
      hv.disposed.push(runtime.pid);
      try {
        process.kill(runtime.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    },

    async attach(runtime: VmRuntime, _dir: string, _log: Logger): Promise<RunningVm> {
      const vm = vmsBySocket.get(runtime.sockets.agent ?? '');
      if (!vm || procStartTime(runtime.pid) !== runtime.startTime) {
        throw new Error(`process ${runtime.pid} is gone or not ours`);
      }
      if (hv.options.failAttach) throw new Error(`the control socket of ${runtime.pid} is dead`);
      // An adopted process is not our child: watch /proc (a test double may poll).
      const exited = new Promise<ExitInfo>((resolve) => {
        const t = setInterval(() => {
          if (procStartTime(runtime.pid) !== runtime.startTime) {
            clearInterval(t);
            resolve({ code: null, signal: null, reason: 'process gone' });
          }
        }, 50);
      });
      return running(hv, vm, runtime, exited);
    },
  };
  return hv;
}

/** Kill every process a fake launched, and every job process of its real agents (test cleanup). */
export function killFakes(hv: FakeHypervisor): void {
  for (const g of hv.guests.values()) for (const pgid of g.pgids) killJobGroup(pgid);
  for (const pid of hv.launched) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
