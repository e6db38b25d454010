/**
 * A fake hypervisor backend for daemon tests that must not need QEMU: each
 * "VM" is a real child process (so pids, start times, exit and recovery are
 * real) and its agent channel is a real unix socket on which an in-process
 * fake agent speaks MQTT through the daemon's broker, like mvirt-agent does.
 *
 * The agent behaviours live beside it: fake-agent.ts scripts modes 'ready',
 * 'silent' and 'garbage'; fake-guest.ts runs mode 'real', the real agent core
 * on the real Linux platform as the VM's guest; fake-vm-types.ts has the
 * types they share. Tests import all of it from here.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type {
  ExitInfo,
  LaunchSpec,
  RunningVm,
  SavedState,
  StateSpec,
  VmRuntime,
} from '../host/hypervisors/types.js';
import { procStartTime } from '../host/hypervisors/proc.js';
import { CMDLINE_KEYS } from '../protocol/agent.js';
import { startAgent } from './fake-agent.js';
import { bootRealGuest, endRealGuest, killJobGroup, rebootRealGuest } from './fake-guest.js';
import type { FakeHypervisor, FakeOptions, FakeVm } from './fake-vm-types.js';

// What tests import from here, wherever it lives now.
export { groupMembers } from './fake-guest.js';
export type {
  AgentMode,
  FakeHypervisor,
  FakeOptions,
  RealGuest,
  SpawnedJob,
} from './fake-vm-types.js';

// The guest "program": exits 0 on SIGHUP (ACPI/agent power-off) and SIGTERM.
const GUEST = `process.on('SIGHUP',()=>process.exit(0));process.on('SIGTERM',()=>process.exit(0));setInterval(()=>{},1e9);process.stdout.write('up');`;

/** The size of a fake VM's saved state (64 KiB: not its memory, but a real file to hash). */
export const FAKE_STATE_BYTES = 64 * 1024;
const FAKE_STATE_FILE = 'state.bin';

/**
 * `saveState` for fakes with `capabilities.snapshots`: a file of the size
 * above; a resume (LaunchSpec.restore) is a boot of the same guest, so the
 * daemon's restore path (checks, identity, the agent's sync) runs for real.
 */
async function saveFakeState(
  hv: FakeHypervisor,
  dir: string,
  spec: StateSpec,
): Promise<SavedState> {
  const file = path.join(dir, FAKE_STATE_FILE);
  await writeFile(file, Buffer.alloc(FAKE_STATE_BYTES, spec.memoryMiB & 0xff), { flag: 'wx' });
  return {
    backend: hv.name,
    version: 'fake 1.0',
    machine: 'fake-machine',
    memoryMiB: spec.memoryMiB,
    vcpus: spec.vcpus,
    devices: createHash('sha256').update('fake devices').digest('hex'),
    ram: 'stream',
    files: { [FAKE_STATE_FILE]: FAKE_STATE_BYTES },
    bytes: FAKE_STATE_BYTES,
  };
}

/** Fake VMs by agent socket path: survives a daemon restart inside one test process. */
const vmsBySocket = new Map<string, FakeVm>();

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
    resume: async () => {
      await hv.options.onResume?.(vm.vmId);
      sig('SIGCONT');
    },
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
    ...(hv.capabilities.snapshots
      ? { saveState: (file: string, spec: StateSpec) => saveFakeState(hv, file, spec) }
      : {}),
  };
}

export function createFakeHypervisor(options: FakeOptions = {}): FakeHypervisor {
  const hv: FakeHypervisor = {
    name: options.name ?? 'qemu',
    options,
    launched: [],
    specs: [],
    received: [],
    spawned: [],
    guests: new Map(),
    disposed: [],
    capabilities: {
      channels: ['virtio-serial'],
      accel: ['kvm', 'tcg'],
      pause: true,
      reboot: true,
      gracefulShutdown: true,
      console: true,
      directKernelBoot: true,
      kernelFormats: ['bzImage', 'elf'],
      // Fake VMs have no block devices to plug: vm.attachDisk on a running one is refused.
      hotplugDisks: false,
      // Fake guests run as their command line's VM: a fake that saves state forks too.
      forks: options.capabilities?.snapshots === true,
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
      diskSnapshot: () => [],
    },
    probe: async () =>
      hv.options.available === false
        ? { available: false, accel: null, reason: 'disabled in the test' }
        : { available: true, accel: 'fake' },

    async launch(spec: LaunchSpec, _log: Logger): Promise<RunningVm> {
      if (hv.options.failLaunch) throw new Error('fake launch failure');
      hv.specs.push(spec);
      // A resume: the daemon's check of the saved state (its sha256) comes first.
      await spec.restore?.check;
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
