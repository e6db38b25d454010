/**
 * A fake hypervisor backend for daemon tests that must not need QEMU: each
 * "VM" is a real child process (so pids, start times, exit and recovery are
 * real) and its agent channel is a real unix socket on which an in-process
 * fake agent speaks MQTT through the daemon's broker, like mvirt-agent does.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import type {
  ExitInfo,
  Hypervisor,
  LaunchSpec,
  RunningVm,
  VmRuntime,
} from '../../host/hypervisors/types.js';
import { procStartTime } from '../../host/vm/proc.js';
import { AGENT_PROTOCOL_VERSION, CMDLINE_KEYS } from '../../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../../protocol/codec.js';

export type AgentMode = 'ready' | 'silent' | 'garbage';

export interface FakeOptions {
  name?: string;
  /** What the fake agent does once connected. */
  agent?: AgentMode;
  /** Make launch throw. */
  failLaunch?: boolean;
  available?: boolean;
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
}

/** Fake VMs by agent socket path: survives a daemon restart inside one test process. */
const vmsBySocket = new Map<string, FakeVm>();

export interface FakeHypervisor extends Hypervisor {
  options: FakeOptions;
  launched: number[];
  /** Messages the fake agents received on their down topics. */
  received: { vmId: string; kind: string; msg: unknown }[];
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
    client.subscribe(`${vm.root}/agent/${vm.vmId}/down/+`, { qos: 1 }, () => {
      client.publish(
        up('hello'),
        encodeCbor({
          protocol: AGENT_PROTOCOL_VERSION,
          agentVersion: 'fake-1',
          kernel: 'fake',
          hostname: vm.vmId,
          pid: 1,
          boot: { initS: 0.1, agentStartS: 0.2, connectedS: 0.3 },
          jobs: [],
        }),
      );
      client.publish(up('ready'), encodeCbor({ at: 0.4 }));
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
  void exited.then(() => {
    dropAgents();
    vm.server.close();
    vmsBySocket.delete(runtime.sockets.agent!);
  });
  return {
    runtime,
    pause: async () => sig('SIGSTOP'),
    resume: async () => sig('SIGCONT'),
    reboot: async () => dropAgents(), // the "guest" restarts: a new agent session follows
    powerdown: async () => sig('SIGHUP'),
    status: async () => 'running',
    connectAgent: () =>
      new Promise<Duplex>((resolve, reject) => {
        const s = net.connect(runtime.sockets.agent!);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      }),
    connectConsole: () => Promise.reject(new Error('no console in the fake')),
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
    capabilities: {
      channels: ['virtio-serial'],
      pause: true,
      reboot: true,
      gracefulShutdown: true,
      console: false,
      directKernelBoot: true,
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
      const sockPath = path.join(spec.dir, 'agent.sock');
      const vm: FakeVm = {
        server: net.createServer(),
        sockets: new Set(),
        agents: new Set(),
        root: spec.agentArgs[CMDLINE_KEYS.root]!,
        vmId: spec.vmId,
        pid,
      };
      vm.server.on('connection', (s) => {
        vm.sockets.add(s);
        s.on('close', () => vm.sockets.delete(s));
        s.on('error', () => undefined);
        startAgent(vm, s, hv.options.agent ?? 'ready', hv.received);
      });
      await new Promise<void>((resolve) => vm.server.listen(sockPath, resolve));
      vmsBySocket.set(sockPath, vm);
      const runtime: VmRuntime = {
        backend: hv.name,
        pid,
        startTime: procStartTime(pid)!,
        accel: 'fake',
        sockets: { agent: sockPath },
      };
      return running(hv, vm, runtime, exited);
    },

    async attach(runtime: VmRuntime, _dir: string, _log: Logger): Promise<RunningVm> {
      const vm = vmsBySocket.get(runtime.sockets.agent ?? '');
      if (!vm || procStartTime(runtime.pid) !== runtime.startTime) {
        throw new Error(`process ${runtime.pid} is gone or not ours`);
      }
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

/** Kill every process a fake launched (test cleanup). */
export function killFakes(hv: FakeHypervisor): void {
  for (const pid of hv.launched) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
