/**
 * The VM manager: lifecycle operations, the one `transition()` every state
 * change goes through, boot as named steps with rollback, the agent channel
 * and console wiring, process-exit handling and recovery after a restart.
 *
 * Everything is event-driven: readiness comes from the agent's `ready`, death
 * from `RunningVm.exited`, timeouts are timers racing those events.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { rmSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { AgentChannelHandle, Broker } from '../broker/types.js';
import type { EventLog } from '../events/log.js';
import type { ExitInfo, LaunchSpec, RunningVm } from '../hypervisors/types.js';
import type { MvirtLogger } from '../log.js';
import type { Store } from '../store/index.js';
import type { TelemetryHub } from '../metrics/telemetry.js';
import {
  AGENT_PROTOCOL_VERSION,
  CMDLINE_KEYS,
  type AgentDownMessage,
  type Exit,
  type Hello,
  type Output,
} from '../../protocol/agent.js';
import type { AgentDownKind } from '../../protocol/topics.js';
import { MvirtError, type ErrorCode } from '../../protocol/errors.js';
import type { NetworkSpec, VmKind, VmRecord, VmState } from '../../protocol/rpc.js';
import type { Topics } from '../../protocol/topics.js';
import { createAgentLink, type AgentLink } from './agent.js';
import type { HypervisorSet } from './hypervisors.js';
import type { BootNetwork, Network } from '../network/index.js';
import type { ImageStore, ResolvedImage } from './images.js';
import {
  clearTimers,
  exitsWithin,
  newLive,
  RECONNECT_MAX_MS,
  AGENT_SESSION_MS,
  RECONNECT_MIN_MS,
  type Live,
} from './live.js';
import { isSameProcess } from './proc.js';
import { ACTIVE_STATES, canTransition, isActive, UP_STATES } from './states.js';
import { runSteps, StepError, type Step } from './steps.js';

export interface VmManagerOptions {
  /** `<data-dir>/vm`: one folder per VM id. */
  vmDir: string;
  defaults: { vcpus: number; memoryMiB: number; image: string; backend: string };
  limits: { vcpus: number; memoryMiB: number; maxVms: number };
  bootTimeoutMs: number;
  /** Graceful stop budget when `vm.stop` gives no timeoutMs. */
  stopTimeoutMs: number;
  /** After SIGTERM, how long before SIGKILL. */
  termTimeoutMs: number;
  /** After SIGKILL, how long before giving up with an error. */
  killTimeoutMs: number;
  /** Timeout of requests to the agent (power, …). */
  agentCallTimeoutMs: number;
  consoleLogBytes: number;
  /** How often agents report telemetry (passed on the kernel command line); default: the agent's. */
  telemetryMs?: number;
}

export const DEFAULT_TIMEOUTS = {
  bootTimeoutMs: 120_000,
  stopTimeoutMs: 30_000,
  termTimeoutMs: 5_000,
  killTimeoutMs: 10_000,
  agentCallTimeoutMs: 5_000,
} as const;

export interface CreateVmParams {
  name: string;
  image?: string;
  vcpus?: number;
  memoryMiB?: number;
  kind?: VmKind;
  backend?: string;
  network?: NetworkSpec;
  metadata?: Record<string, string>;
  userData?: string;
  metaData?: string;
  networkConfig?: string;
}

export interface VmManagerDeps {
  store: Store;
  events: EventLog;
  broker: Pick<Broker, 'publish' | 'subscribe' | 'attachAgentChannel'>;
  hypervisors: HypervisorSet;
  images: ImageStore;
  network: Network;
  /** Where validated agent telemetry goes (republished, rolled up). */
  telemetry: Pick<TelemetryHub, 'report'>;
  topics: Topics;
  log: MvirtLogger;
  options: VmManagerOptions;
}

export type VmManager = ReturnType<typeof createVmManager>;

/** What the job manager hears from the agents, through the VM manager that owns the channels. */
export interface JobHooks {
  output(vmId: string, msg: Output): void;
  exit(vmId: string, msg: Exit): void;
  /** Every agent hello: the first after boot and each one after a reconnect. */
  hello(vmId: string, hello: Hello): void;
  /** The agent channel closed while the VM lives on (the agent may come back). */
  agentGone(vmId: string): void;
}

const COMPONENT = 'vm';

/** The hypervisor interface takes a plain pino Logger; ours has the extra `audit` level. */
const plain = (l: MvirtLogger): Logger => l as unknown as Logger;

export function createVmManager(deps: VmManagerDeps) {
  const { store, events, broker, hypervisors, images, network, topics, options } = deps;
  const log = deps.log.child({ component: COMPONENT });
  const vms = store.vms;
  const lives = new Map<string, Live>();
  const states = new EventEmitter();
  states.setMaxListeners(0);
  let closing = false;
  let unsubscribeConsole: (() => Promise<void>) | undefined;

  const agent: AgentLink = createAgentLink({
    bus: broker,
    topics,
    log: deps.log.child({ component: 'agent' }),
    isKnown: (id) => lives.get(id)?.running !== undefined,
    handlers: {
      hello: onHello,
      ready: onReady,
      telemetry: (id, t) => deps.telemetry.report(id, t),
      log: (id, m) => lives.get(id)?.log[m.level]({ guest: true }, m.message),
      output: (id, m) => jobHooks?.output(id, m),
      exit: (id, m) => jobHooks?.exit(id, m),
    },
  });
  /** The job manager's side of the agent exchange (set once it exists). */
  let jobHooks: JobHooks | undefined;

  // ------------------------------------------------------------ helpers

  const now = (): string => new Date().toISOString();
  const dirOf = (id: string): string => path.join(options.vmDir, id);

  function publish(topic: string, payload: string | Buffer, retain = false): void {
    broker.publish(topic, payload, { retain, qos: 1 }).catch((err: unknown) => {
      log.warn({ err, topic }, 'publish failed');
    });
  }

  const publishState = (rec: VmRecord): void =>
    publish(topics.vmState(rec.id), JSON.stringify(rec), true);

  function find(ref: string): VmRecord {
    const vm = vms.find(ref);
    if (!vm) throw new MvirtError('VM_NOT_FOUND', `no VM with id or name ${ref}`);
    return vm;
  }

  function audit(message: string, objects: string[], data?: unknown): void {
    events.append({ level: 'audit', component: COMPONENT, message, objects, data });
  }

  // Per-VM serialisation of lifecycle operations (boot, stop, pause, …).
  // `kill` bypasses it on purpose: it must win over a slow graceful stop.
  const locks = new Map<string, Promise<unknown>>();
  function withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = locks.get(id) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    locks.set(id, tail);
    void tail.then(() => {
      if (locks.get(id) === tail) locks.delete(id);
    });
    return next;
  }

  // ------------------------------------------------------------ the one transition

  /**
   * The only way a VM changes state: checks the transition table, persists
   * (compare-and-set on the old state, with its event, in one transaction),
   * publishes the retained state and the VM event, logs at audit level.
   */
  function transition(
    id: string,
    to: VmState,
    reason: string | null,
    level: 'audit' | 'warn' | 'error' = 'audit',
  ): VmRecord {
    const cur = vms.get(id);
    if (!cur) throw new MvirtError('VM_NOT_FOUND', `no VM with id ${id}`);
    const from = cur.state;
    if (!canTransition(from, to)) {
      throw new MvirtError('VM_BAD_STATE', `VM ${cur.name} is ${from} and cannot become ${to}`, {
        details: { state: from },
      });
    }
    const at = now();
    store.db.transaction(() => {
      if (!vms.setState(id, from, to, reason, at)) {
        throw new MvirtError('VM_BAD_STATE', `VM ${cur.name} changed state concurrently`);
      }
      if (to === 'starting') vms.setStarted(id, at);
      events.append({
        level,
        component: COMPONENT,
        message: `${cur.name}: ${from} → ${to}${reason ? ` (${reason})` : ''}`,
        objects: [id],
        data: { from, to, reason },
      });
    })();
    const rec = vms.get(id)!;
    publishState(rec);
    events.publishVmEvent(id, {
      at,
      type: 'state',
      from,
      to,
      ...(reason ? { reason } : {}),
    });
    states.emit('state', rec, from);
    return rec;
  }

  /** Resolve once the VM reaches one of `ok`; reject when it reaches one of `fail`. */
  function waitForState(id: string, ok: VmState[], fail: VmState[]): Promise<VmRecord> {
    return new Promise((resolve, reject) => {
      const settle = (rec: VmRecord): boolean => {
        if (ok.includes(rec.state)) {
          resolve(rec);
          return true;
        }
        if (fail.includes(rec.state)) {
          const f = lives.get(id)?.failure ?? lastFailure.get(id);
          const code: ErrorCode =
            rec.state === 'failed' ? (f?.code ?? 'BOOT_FAILED') : 'BOOT_FAILED';
          reject(
            new MvirtError(
              code,
              `VM ${rec.name} is ${rec.state}: ${rec.stateReason ?? 'no reason'}`,
            ),
          );
          return true;
        }
        return false;
      };
      const cur = vms.get(id);
      if (!cur) return reject(new MvirtError('VM_NOT_FOUND', `VM ${id} was deleted`));
      if (settle(cur)) return;
      const onState = (rec: VmRecord): void => {
        if (rec.id === id && settle(rec)) states.off('state', onState);
      };
      states.on('state', onState);
    });
  }
  const lastFailure = new Map<string, { code: ErrorCode; reason: string }>();

  /** Fail a booting VM: record why, move it to failed, kill the process. */
  function failBoot(live: Live, code: ErrorCode, reason: string): void {
    live.failure = { code, reason };
    lastFailure.set(live.id, live.failure);
    live.exitIntent = { to: 'failed', reason };
    const cur = vms.get(live.id);
    if (cur && canTransition(cur.state, 'failed')) transition(live.id, 'failed', reason, 'error');
    live.running?.signal('SIGKILL');
  }

  function armBootTimer(live: Live): void {
    if (live.bootTimer) clearTimeout(live.bootTimer);
    live.bootTimer = setTimeout(() => {
      live.bootTimer = undefined;
      if (vms.get(live.id)?.state !== 'starting') return;
      failBoot(
        live,
        'BOOT_TIMEOUT',
        `the agent did not say ready within ${options.bootTimeoutMs} ms (--boot-timeout-ms)`,
      );
    }, options.bootTimeoutMs);
  }

  // ------------------------------------------------------------ process exit

  function watchExit(live: Live, running: RunningVm): void {
    running.exited.then(
      (info) => onExit(live, info),
      (err: unknown) => onExit(live, { code: null, signal: null, reason: String(err) }),
    );
  }

  /** Runs synchronously on exit so that awaiting `exited` observes the new state. */
  function onExit(live: Live, info: ExitInfo): void {
    if (live.gone || live.detached) return;
    live.gone = true;
    clearTimers(live);
    live.agentHandle?.close();
    live.console?.destroy();
    agent.dropVm(live.id, 'the VM exited');
    if (lives.get(live.id) === live) lives.delete(live.id);
    const sockets = live.running?.runtime.sockets ?? {};
    try {
      vms.deleteRuntime(live.id);
    } catch (err) {
      log.error({ vmId: live.id, err }, 'cannot delete runtime row');
    }
    removeSockets(live.dir, sockets);
    network
      .release(live.id)
      .catch((err: unknown) => live.log.warn({ err }, 'cannot release the network of the VM'));

    const cur = vms.get(live.id);
    if (!cur) return;
    const how = info.signal ? `signal ${info.signal}` : `exit code ${String(info.code)}`;
    let to: VmState;
    let reason: string;
    let level: 'audit' | 'warn' | 'error' = 'audit';
    if (live.exitIntent) {
      ({ to, reason } = live.exitIntent);
    } else if (cur.state === 'stopping') {
      to = 'stopped';
      reason = cur.stateReason ?? 'stopped';
    } else if (cur.state === 'starting') {
      to = 'failed';
      reason = `hypervisor exited during boot (${how}): ${info.reason}`;
      level = 'error';
      live.failure = { code: 'BOOT_FAILED', reason };
      lastFailure.set(live.id, live.failure);
    } else if (info.code === 0 && !info.signal) {
      to = 'stopped';
      reason = `the guest powered off (${info.reason})`;
    } else {
      to = 'failed';
      reason = `hypervisor process exited unexpectedly (${how}): ${info.reason}`;
      level = 'warn';
    }
    if (cur.state === to || !isActive(cur.state)) {
      log.info({ vmId: live.id, state: cur.state, how }, 'hypervisor process exited');
      return;
    }
    if (!canTransition(cur.state, to)) to = 'failed';
    transition(live.id, to, reason, level);
  }

  /**
   * Synchronous on purpose: a start right after an exit reuses the same socket
   * paths, and an unlink that ran late removed the new QEMU's sockets (the new
   * boot then waited forever for agent.sock).
   */
  function removeSockets(dir: string, sockets: Record<string, string>): void {
    for (const p of Object.values(sockets)) {
      // Only inside the VM's own folder: a runtime row is data, not authority.
      const abs = path.resolve(dir, p);
      if (!abs.startsWith(dir + path.sep)) continue;
      try {
        rmSync(abs, { force: true });
      } catch {
        /* already gone */
      }
    }
  }

  // ------------------------------------------------------------ agent and console

  async function connectAgent(live: Live): Promise<void> {
    // Over the network the guest dials; its session arrives through guestAgent().
    if (!live.running || live.agentOverNetwork) return;
    const stream = await live.running.connectAgent();
    if (live.gone || live.detached) {
      stream.destroy();
      return;
    }
    adoptAgentHandle(live, broker.attachAgentChannel(live.id, stream));
  }

  /** Wire an agent session's host end (channel or guest TCP) to the VM. */
  function adoptAgentHandle(live: Live, handle: AgentChannelHandle): void {
    const previous = live.agentHandle;
    live.agentHandle = handle;
    previous?.close();
    if (live.holdAgent) handle.hold(true);
    live.log.debug('agent channel attached');
    // A channel that carries no agent hello for a while is recycled. After a
    // guest reset, bytes of the old agent's session can still sit in QEMU's
    // virtio-serial queue and wedge the new session on this stream (seen under
    // TCG when a reboot followed a resume within milliseconds); a fresh host end
    // lets the agent's own reconnect through. A silent stream is already
    // closed by the broker's CONNECT timeout, so this only ends stuck sessions.
    const watchdog = setTimeout(() => {
      if (live.agentHandle === handle && !live.hello && !live.agentOverNetwork) {
        live.log.warn('agent channel without a hello; recycling it');
        handle.close();
      }
    }, AGENT_SESSION_MS);
    void handle.closed.then(() => {
      clearTimeout(watchdog);
      if (live.agentHandle !== handle) return;
      live.agentHandle = undefined;
      live.hello = undefined;
      agent.dropVm(live.id, 'the agent channel closed');
      if (live.gone || live.detached) return;
      jobHooks?.agentGone(live.id);
      if (live.agentOverNetwork) {
        live.log.info('agent session over the network closed; the agent redials');
        return;
      }
      // The guest side reconnects by itself; we only need a fresh host end.
      live.log.info('agent channel closed; reconnecting');
      scheduleAgentReconnect(live);
    });
  }

  function scheduleAgentReconnect(live: Live): void {
    if (live.reconnectTimer || live.gone || live.detached) return;
    const delay = live.reconnectDelayMs;
    live.reconnectDelayMs = Math.min(delay * 2, RECONNECT_MAX_MS);
    live.reconnectTimer = setTimeout(() => {
      live.reconnectTimer = undefined;
      connectAgent(live).catch((err: unknown) => {
        live.log.debug({ err: String(err) }, 'agent channel reconnect failed');
        scheduleAgentReconnect(live);
      });
    }, delay);
  }

  async function attachConsole(live: Live): Promise<void> {
    if (!live.running || !live.hv.capabilities.console) return;
    try {
      const s = await live.running.connectConsole();
      live.console = s;
      s.on('data', (chunk: Buffer) => publish(topics.vmConsoleOut(live.id), chunk));
      s.on('error', (err) => live.log.debug({ err: String(err) }, 'console stream error'));
      s.on('close', () => {
        if (live.console === s) live.console = undefined;
      });
    } catch (err) {
      // The console is a convenience: a VM without one still boots.
      live.log.warn({ err: String(err) }, 'cannot attach the serial console');
    }
  }

  function onHello(id: string, hello: Hello): void {
    const live = lives.get(id);
    if (!live) return;
    live.hello = hello;
    live.reconnectDelayMs = RECONNECT_MIN_MS;
    if (hello.protocol !== AGENT_PROTOCOL_VERSION) {
      live.log.warn(
        { agentProtocol: hello.protocol, hostProtocol: AGENT_PROTOCOL_VERSION },
        'agent speaks another protocol version',
      );
    }
    vms.setAgent(id, hello.boot, hello.agentVersion, now());
    const rec = vms.get(id);
    if (rec) publishState(rec);
    events.append({
      level: 'info',
      component: 'agent',
      message: `agent hello (mvirt-agent ${hello.agentVersion}, kernel ${hello.kernel})`,
      objects: [id],
      data: { boot: hello.boot, agentVersion: hello.agentVersion, kernel: hello.kernel },
    });
    events.publishVmEvent(id, { at: now(), type: 'agent.hello' });
    jobHooks?.hello(id, hello);
  }

  function onReady(id: string): void {
    const live = lives.get(id);
    if (!live) return;
    if (!live.hello) {
      live.log.warn('agent said ready before hello; dropped');
      return;
    }
    const cur = vms.get(id);
    if (cur?.state !== 'starting') {
      // A re-hello after a channel reconnect or daemon restart: nothing changes.
      live.log.debug({ state: cur?.state }, 'agent ready again');
      return;
    }
    if (live.bootTimer) clearTimeout(live.bootTimer);
    live.bootTimer = undefined;
    if (live.launchedAt !== undefined) {
      const readyAtMs = Math.round(performance.now() - live.launchedAt);
      vms.setAgent(id, { ...live.hello.boot, readyAtMs }, live.hello.agentVersion, now());
      live.log.info({ readyAtMs, boot: live.hello.boot }, 'VM ready');
    }
    transition(id, 'ready', 'the agent is ready');
  }

  // ------------------------------------------------------------ boot

  interface BootCtx {
    vm: VmRecord;
    image?: ResolvedImage;
    live?: Live;
    net?: BootNetwork;
  }

  type Size = { vcpus: number; memoryMiB: number };
  type Reserved = Size & { vms: number };
  const NOTHING_RESERVED: Reserved = { vms: 0, vcpus: 0, memoryMiB: 0 };

  /**
   * The one admission check: why one more VM of this size would not fit now,
   * or null. `reserved`: VMs a caller is still creating (not `starting` yet,
   * so not in allocated()).
   */
  function admissionProblem(vm: Size, reserved: Reserved = NOTHING_RESERVED): MvirtError | null {
    const held = vms.allocated();
    const a = {
      vms: held.vms + reserved.vms,
      vcpus: held.vcpus + reserved.vcpus,
      memoryMiB: held.memoryMiB + reserved.memoryMiB,
    };
    const l = options.limits;
    if (a.vms + 1 > l.maxVms) {
      return new MvirtError(
        'CAPACITY_EXCEEDED',
        `VM limit reached: ${a.vms} of ${l.maxVms} VMs are running (--max-vms)`,
        { details: { limit: 'maxVms', allocated: a.vms, max: l.maxVms } },
      );
    }
    if (a.vcpus + vm.vcpus > l.vcpus) {
      return new MvirtError(
        'CAPACITY_EXCEEDED',
        `vCPU limit: ${a.vcpus} allocated + ${vm.vcpus} requested > ${l.vcpus} (--max-vcpus)`,
        { details: { limit: 'vcpus', allocated: a.vcpus, requested: vm.vcpus, max: l.vcpus } },
      );
    }
    if (a.memoryMiB + vm.memoryMiB > l.memoryMiB) {
      return new MvirtError(
        'CAPACITY_EXCEEDED',
        `memory limit: ${a.memoryMiB} MiB allocated + ${vm.memoryMiB} MiB requested > ${l.memoryMiB} MiB (--max-memory-mib)`,
        {
          details: {
            limit: 'memoryMiB',
            allocated: a.memoryMiB,
            requested: vm.memoryMiB,
            max: l.memoryMiB,
          },
        },
      );
    }
    return null;
  }

  function admit(vm: VmRecord): void {
    const problem = admissionProblem(vm);
    if (problem) throw problem;
  }

  const BOOT_STEPS: Step<BootCtx>[] = [
    {
      name: 'resolve image',
      run: async (c) => {
        c.image = await images.resolve(c.vm.image);
      },
    },
    {
      name: 'check backend',
      run: async (c) => {
        const hv = hypervisors.get(c.vm.backend);
        const probe = await hypervisors.probe(c.vm.backend);
        if (!hv || !probe.available) {
          throw new MvirtError(
            'BACKEND_UNAVAILABLE',
            `backend ${c.vm.backend} is not available on this host${probe.reason ? `: ${probe.reason}` : ''}`,
          );
        }
        c.live = newLive({
          id: c.vm.id,
          hv,
          dir: dirOf(c.vm.id),
          log: log.child({ vmId: c.vm.id, vm: c.vm.name }),
          agentExpected: c.image!.agent,
          agentOverNetwork: c.vm.network.agentOverNetwork === true,
        });
      },
    },
    {
      // Check and reserve in one synchronous block: the `starting` row is the
      // reservation the next admission check sees.
      name: 'admission',
      run: (c) => {
        if (closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
        admit(c.vm);
        c.vm = transition(c.vm.id, 'starting', 'start requested');
        lives.set(c.vm.id, c.live!);
        lastFailure.delete(c.vm.id);
      },
      undo: (c) => {
        if (lives.get(c.vm.id) === c.live) lives.delete(c.vm.id);
      },
    },
    {
      name: 'prepare dir',
      run: async (c) => {
        await mkdir(c.live!.dir, { recursive: true, mode: 0o700 });
      },
    },
    {
      // TAP on the bridge (or user mode's passt), the per-boot token, the seed disk.
      name: 'prepare network',
      run: async (c) => {
        c.net = await network.prepare(c.vm, c.live!.dir);
      },
      undo: (c) => network.release(c.vm.id),
    },
    {
      name: 'launch hypervisor',
      run: async (c) => {
        const live = c.live!;
        const img = c.image!;
        const net = c.net!;
        const spec: LaunchSpec = {
          vmId: c.vm.id,
          vcpus: c.vm.vcpus,
          memoryMiB: c.vm.memoryMiB,
          kernel: img.kernel,
          initrd: img.initrd,
          cmdline: img.cmdline,
          // The image's root disk first: the µOS looks for its squashfs on the first disks.
          disks: [...(img.disk ? [{ path: img.disk, readOnly: true }] : []), ...net.disks],
          dir: live.dir,
          channel: net.channel ?? live.hv.capabilities.channels[0] ?? 'virtio-serial',
          // The backend adds mvirt.vm and mvirt.channel itself.
          agentArgs: {
            [CMDLINE_KEYS.root]: topics.root,
            ...(options.telemetryMs !== undefined
              ? { [CMDLINE_KEYS.telemetryMs]: String(options.telemetryMs) }
              : {}),
            ...net.cmdline,
          },
          network: net.nic,
          consoleLogBytes: options.consoleLogBytes,
        };
        live.launchedAt = performance.now();
        const running = await live.hv.launch(spec, plain(live.log));
        live.running = running;
        watchExit(live, running);
        armBootTimer(live);
        live.log.info(
          { pid: running.runtime.pid, accel: running.runtime.accel },
          'hypervisor launched',
        );
      },
      undo: async (c) => {
        const running = c.live?.running;
        if (!running) return;
        running.signal('SIGKILL');
        await exitsWithin(running, options.killTimeoutMs);
      },
    },
    {
      name: 'persist runtime',
      run: (c) => {
        vms.putRuntime(c.vm.id, c.live!.running!.runtime, now());
        network.persist(c.vm.id);
        const rec = vms.get(c.vm.id);
        if (rec) publishState(rec); // now with pid and accel
      },
      undo: (c) => vms.deleteRuntime(c.vm.id),
    },
    { name: 'attach console', run: (c) => attachConsole(c.live!) },
    {
      name: 'connect agent channel',
      run: async (c) => {
        if (c.live!.agentExpected) await connectAgent(c.live!);
      },
    },
  ];

  async function boot(id: string): Promise<VmRecord> {
    const vm = vms.get(id);
    if (!vm) throw new MvirtError('VM_NOT_FOUND', `no VM with id ${id}`);
    if (vm.state === 'stopping') {
      throw new MvirtError('VM_BAD_STATE', `VM ${vm.name} is stopping; start it once stopped`);
    }
    if (isActive(vm.state)) return vm; // already up or booting: start is idempotent
    const ctx: BootCtx = { vm };
    let failed: { step: string; reason: string } | undefined;
    try {
      await runSteps(BOOT_STEPS, ctx, log.child({ vmId: id }), (step, err) => {
        const reason = `boot step '${step}' failed: ${err instanceof Error ? err.message : String(err)}`;
        failed = { step, reason };
        // Rollback kills the process; its exit must not be read as a crash.
        if (ctx.live) ctx.live.exitIntent = { to: 'failed', reason };
      });
    } catch (err) {
      const inner = err instanceof StepError ? err.error : err;
      const code: ErrorCode = inner instanceof MvirtError ? inner.code : 'BOOT_FAILED';
      const reason = failed?.reason ?? String(inner);
      if (ctx.live) {
        ctx.live.failure = { code, reason };
        clearTimers(ctx.live);
        if (lives.get(id) === ctx.live) lives.delete(id);
      }
      lastFailure.set(id, { code, reason });
      if (vms.get(id)?.state === 'starting') transition(id, 'failed', reason, 'error');
      if (inner instanceof MvirtError) throw inner;
      throw new MvirtError('BOOT_FAILED', reason, { cause: inner });
    }
    const live = ctx.live!;
    if (!live.agentExpected) {
      clearTimers(live);
      return transition(id, 'running', 'the image has no agent');
    }
    return vms.get(id)!;
  }

  // ------------------------------------------------------------ stop

  async function stopProcess(live: Live, running: RunningVm, timeoutMs: number): Promise<void> {
    const state = vms.get(live.id)?.state;
    if (live.pausedFrom !== undefined || state === 'paused') {
      // A paused guest cannot react to a power-off request.
      await running.resume().catch(() => undefined);
    }
    const powerdown = (): Promise<void> =>
      live.hv.capabilities.gracefulShutdown
        ? running.powerdown().catch((err: unknown) => {
            live.log.warn({ err: String(err) }, 'ACPI powerdown failed');
          })
        : Promise.resolve();
    if (live.hello && live.agentHandle) {
      live.log.info('asking the agent to power off');
      agent
        .call(live.id, 'power', { action: 'poweroff' }, options.agentCallTimeoutMs)
        .catch((err: unknown) => {
          if (live.gone) return;
          live.log.info({ err: String(err) }, 'agent power-off failed; trying ACPI powerdown');
          return powerdown();
        });
    } else {
      live.log.info('ACPI powerdown');
      void powerdown();
    }
    if (await exitsWithin(running, timeoutMs)) return;
    live.log.warn({ timeoutMs }, 'graceful stop timed out; SIGTERM');
    running.signal('SIGTERM');
    if (await exitsWithin(running, options.termTimeoutMs)) return;
    live.log.warn({ timeoutMs: options.termTimeoutMs }, 'SIGTERM ignored; SIGKILL');
    running.signal('SIGKILL');
    if (await exitsWithin(running, options.killTimeoutMs)) return;
    throw new MvirtError('HYPERVISOR_ERROR', `VM ${live.id} did not exit after SIGKILL`);
  }

  /** Wait for a lifecycle lock held by a boot in progress, then return the live entry. */
  function liveOf(id: string): Live | undefined {
    const l = lives.get(id);
    return l?.running ? l : undefined;
  }

  // ------------------------------------------------------------ public operations

  return {
    transition,
    waitForState,

    async create(p: CreateVmParams): Promise<VmRecord> {
      if (closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
      if (vms.nameTaken(p.name)) {
        throw new MvirtError('VM_EXISTS', `a VM named ${p.name} already exists`);
      }
      const vcpus = p.vcpus ?? options.defaults.vcpus;
      const memoryMiB = p.memoryMiB ?? options.defaults.memoryMiB;
      const l = options.limits;
      if (vcpus > l.vcpus) {
        throw new MvirtError(
          'CAPACITY_EXCEEDED',
          `${vcpus} vCPUs exceed the host limit of ${l.vcpus} (--max-vcpus)`,
          { details: { limit: 'vcpus', requested: vcpus, max: l.vcpus } },
        );
      }
      if (memoryMiB > l.memoryMiB) {
        throw new MvirtError(
          'CAPACITY_EXCEEDED',
          `${memoryMiB} MiB exceed the host memory limit of ${l.memoryMiB} MiB (--max-memory-mib)`,
          { details: { limit: 'memoryMiB', requested: memoryMiB, max: l.memoryMiB } },
        );
      }
      const backend = p.backend ?? options.defaults.backend;
      if (!hypervisors.get(backend)) {
        throw new MvirtError(
          'BACKEND_UNAVAILABLE',
          `no backend named ${backend}; known: ${hypervisors.names().join(', ')}`,
        );
      }
      const image = p.image ?? options.defaults.image;
      await images.resolve(image);
      const net = network.resolve(p.network);
      const id = `vm-${randomBytes(6).toString('hex')}`;
      try {
        // One transaction: a VM whose address cannot be allocated is not created.
        store.db.transaction(() => {
          vms.insert({
            id,
            name: p.name,
            vcpus,
            memoryMiB,
            kind: p.kind ?? 'service',
            image,
            backend,
            network: net,
            metadata: p.metadata ?? {},
          });
          network.define(id, net, {
            ...(p.userData !== undefined ? { userData: p.userData } : {}),
            ...(p.metaData !== undefined ? { metaData: p.metaData } : {}),
            ...(p.networkConfig !== undefined ? { networkConfig: p.networkConfig } : {}),
          });
        })();
      } catch (err) {
        if (err instanceof MvirtError) throw err;
        if (String(err).includes('UNIQUE')) {
          throw new MvirtError('VM_EXISTS', `a VM named ${p.name} already exists`);
        }
        throw err;
      }
      const rec = vms.get(id)!;
      publishState(rec);
      audit(`${p.name}: created`, [id, `image:${image}`], {
        name: p.name,
        image,
        vcpus,
        memoryMiB,
        backend,
        network: net,
        ...(rec.ip ? { ip: rec.ip, mac: rec.mac } : {}),
      });
      events.publishVmEvent(id, { at: rec.createdAt, type: 'created' });
      return rec;
    },

    get: (ref: string): VmRecord => find(ref),
    /** The id of the VM with this id or name, if any. */
    resolveId: (ref: string): string | undefined => vms.find(ref)?.id,
    list: (state?: VmState): VmRecord[] => vms.list(state),
    /** VMs tagged with a metadata key (and value): the VMs of a pool or of jobs. */
    tagged: (key: string, value?: string): VmRecord[] => vms.tagged(key, value),

    async start(ref: string, wait = false): Promise<VmRecord> {
      const { id } = find(ref);
      if (closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
      const rec = await withLock(id, () => boot(id));
      if (!wait) return rec;
      return waitForState(id, ['ready', 'running', 'busy'], ['failed', 'stopped', 'stopping']);
    },

    async stop(ref: string, timeoutMs = options.stopTimeoutMs): Promise<VmRecord> {
      const { id } = find(ref);
      return withLock(id, async () => {
        const cur = vms.get(id);
        if (!cur) throw new MvirtError('VM_NOT_FOUND', `VM ${ref} was deleted`);
        const live = liveOf(id);
        if (!live) {
          if (isActive(cur.state)) {
            // State says up but no process is known: record the truth.
            if (cur.state !== 'stopping') transition(id, 'stopping', 'stop requested');
            return transition(id, 'stopped', 'no hypervisor process was running');
          }
          return cur;
        }
        if (cur.state !== 'stopping') {
          if (!canTransition(cur.state, 'stopping')) return cur;
          transition(id, 'stopping', 'stop requested');
        }
        audit(`${cur.name}: stop`, [id], { timeoutMs });
        await stopProcess(live, live.running!, timeoutMs);
        return vms.get(id)!;
      });
    },

    async kill(ref: string): Promise<VmRecord> {
      const { id } = find(ref);
      let live = liveOf(id);
      // A boot in progress holds the lock until its process exists.
      if (!live && locks.has(id)) await withLock(id, () => Promise.resolve());
      live = liveOf(id);
      const cur = find(id); // deleted meanwhile: VM_NOT_FOUND
      if (!live) {
        if (isActive(cur.state)) {
          if (cur.state !== 'stopping') transition(id, 'stopping', 'kill requested');
          return transition(id, 'stopped', 'killed (no hypervisor process was running)');
        }
        return cur;
      }
      if (cur.state !== 'stopping' && canTransition(cur.state, 'stopping')) {
        transition(id, 'stopping', 'kill requested');
      }
      live.exitIntent = { to: 'stopped', reason: 'killed' };
      audit(`${cur.name}: kill`, [id]);
      live.running!.signal('SIGKILL');
      if (!(await exitsWithin(live.running!, options.killTimeoutMs))) {
        throw new MvirtError('HYPERVISOR_ERROR', `VM ${cur.name} did not exit after SIGKILL`);
      }
      return vms.get(id)!;
    },

    async pause(ref: string): Promise<VmRecord> {
      const { id } = find(ref);
      return withLock(id, async () => {
        const cur = find(id); // deleted meanwhile: VM_NOT_FOUND
        const live = liveOf(id);
        if (!live || !UP_STATES.includes(cur.state)) {
          throw new MvirtError('VM_BAD_STATE', `VM ${cur.name} is ${cur.state}; cannot pause`);
        }
        await hvCall(cur.name, 'pause', () => live.running!.pause());
        live.pausedFrom = cur.state;
        return transition(id, 'paused', 'pause requested');
      });
    },

    async resume(ref: string): Promise<VmRecord> {
      const { id } = find(ref);
      return withLock(id, async () => {
        const cur = find(id); // deleted meanwhile: VM_NOT_FOUND
        const live = liveOf(id);
        if (!live || cur.state !== 'paused') {
          throw new MvirtError('VM_BAD_STATE', `VM ${cur.name} is ${cur.state}; cannot resume`);
        }
        await hvCall(cur.name, 'resume', () => live.running!.resume());
        const to = live.pausedFrom ?? (live.agentExpected ? 'ready' : 'running');
        live.pausedFrom = undefined;
        return transition(id, to, 'resume requested');
      });
    },

    async reboot(ref: string): Promise<VmRecord> {
      const { id } = find(ref);
      return withLock(id, async () => {
        const cur = find(id); // deleted meanwhile: VM_NOT_FOUND
        const live = liveOf(id);
        if (!live || !UP_STATES.includes(cur.state)) {
          throw new MvirtError('VM_BAD_STATE', `VM ${cur.name} is ${cur.state}; cannot reboot`);
        }
        const rec = transition(id, 'starting', 'reboot requested');
        live.hello = undefined;
        live.launchedAt = performance.now();
        armBootTimer(live);
        try {
          await hvCall(cur.name, 'reboot', () => live.running!.reboot());
        } catch (err) {
          failBoot(live, 'HYPERVISOR_ERROR', `reboot failed: ${String(err)}`);
          throw err;
        }
        // The new guest's agent starts a fresh MQTT session: give it a fresh host end.
        if (live.agentExpected) {
          const h = live.agentHandle;
          if (h) h.close();
          else scheduleAgentReconnect(live);
        } else {
          clearTimers(live);
          return transition(id, 'running', 'rebooted (the image has no agent)');
        }
        return rec;
      });
    },

    async delete(ref: string): Promise<Record<string, never>> {
      const { id } = find(ref);
      return withLock(id, async () => {
        const cur = find(id); // deleted meanwhile: VM_NOT_FOUND
        if (cur.state !== 'stopped' && cur.state !== 'failed') {
          throw new MvirtError(
            'VM_RUNNING',
            `VM ${cur.name} is ${cur.state}; stop it before deleting it`,
            { details: { state: cur.state } },
          );
        }
        const live = lives.get(id);
        if (live?.running) {
          // A failed VM whose process is still exiting.
          live.running.signal('SIGKILL');
          await exitsWithin(live.running, options.killTimeoutMs);
        }
        await rm(dirOf(id), { recursive: true, force: true });
        vms.delete(id);
        lastFailure.delete(id);
        publish(topics.vmState(id), '', true); // clears the retained state
        audit(`${cur.name}: deleted`, [id, `image:${cur.image}`]);
        events.publishVmEvent(id, { at: now(), type: 'deleted' });
        return {};
      });
    },

    /** Resources held by VMs that are not stopped or failed. */
    allocated: () => vms.allocated(),
    /** Would a VM of this size pass admission control now (see admissionProblem)? */
    canAdmit: (size: Size, reserved?: Reserved): boolean =>
      admissionProblem(size, reserved) === null,
    defaults: options.defaults,
    /** IMAGE_NOT_FOUND unless the image exists (for job.run and pool.set, like vm.create). */
    async checkImage(name: string): Promise<void> {
      await images.resolve(name);
    },

    // -------------------------------------------------- for the job manager
    setJobHooks(h: JobHooks): void {
      jobHooks = h;
    },
    /** The hello of the VM's current agent session, if one is connected. */
    agentHello: (id: string): Hello | undefined => lives.get(id)?.hello,
    callAgent<K extends AgentDownKind>(
      id: string,
      kind: K,
      body: Omit<AgentDownMessage[K], 'id'>,
      timeoutMs: number,
    ): Promise<unknown> {
      if (!lives.get(id)?.hello)
        return Promise.reject(
          new MvirtError('AGENT_UNAVAILABLE', `VM ${id} has no agent connected`),
        );
      return agent.call(id, kind, body, timeoutMs);
    },
    sendAgent<K extends AgentDownKind>(
      id: string,
      kind: K,
      msg: AgentDownMessage[K],
    ): Promise<void> {
      return agent.send(id, kind, msg);
    },
    /** An agent authenticated on the guest TCP listener (its token named this VM). */
    guestAgent(vmId: string, handle: AgentChannelHandle): void {
      const live = lives.get(vmId);
      if (!live?.running || !live.agentOverNetwork || live.gone || live.detached) {
        log.warn({ vmId }, 'guest TCP agent for a VM that does not expect one; closed');
        handle.close();
        return;
      }
      live.log.debug('agent session over the network');
      adoptAgentHandle(live, handle);
    },
    /** Flow control of a VM's agent channel (see AgentChannelHandle.hold). */
    holdAgent(id: string, paused: boolean): void {
      const live = lives.get(id);
      if (!live) return;
      live.holdAgent = paused;
      live.agentHandle?.hold(paused);
    },
    /** ready ⇄ busy as jobs start and end (also remembered across a pause). */
    setBusy(id: string, busy: boolean): void {
      const cur = vms.get(id);
      if (!cur) return;
      if (busy && cur.state === 'ready') transition(id, 'busy', 'a job is running');
      else if (!busy && cur.state === 'busy') transition(id, 'ready', 'no job is running');
      else if (cur.state === 'paused') {
        const live = lives.get(id);
        if (live && (live.pausedFrom === 'ready' || live.pausedFrom === 'busy'))
          live.pausedFrom = busy ? 'busy' : 'ready';
      }
    },
    countByState: () => vms.countByState(),
    onStateChange(fn: (rec: VmRecord, from: VmState) => void): () => void {
      states.on('state', fn);
      return () => states.off('state', fn);
    },
    runningCount: () => lives.size,

    /** Start listening to agents and console input; then re-attach surviving VMs. */
    async startup(): Promise<void> {
      await agent.start();
      unsubscribeConsole = await broker.subscribe(topics.vmConsoleInWildcard, (topic, payload) => {
        const id = topic.split('/').at(-3);
        const live = id ? lives.get(id) : undefined;
        live?.console?.write(payload);
      });
      await recover();
    },

    /** Daemon shutdown: leave VMs running (default) or stop them all. */
    async shutdown(stopVms: boolean): Promise<void> {
      closing = true;
      const all = [...lives.values()];
      if (stopVms) {
        log.info({ vms: all.length }, 'stopping all VMs (--stop-vms-on-exit)');
        await Promise.allSettled(all.map((l) => this.stop(l.id)));
      } else {
        for (const live of all) {
          live.detached = true;
          clearTimers(live);
          live.agentHandle?.close();
          live.console?.destroy();
          await live.running?.detach().catch(() => undefined);
        }
        if (all.length > 0) {
          log.info(
            { vms: all.map((l) => l.id) },
            `leaving ${all.length} VM(s) running; they will be re-attached when mvirtd starts again (use --stop-vms-on-exit to stop them)`,
          );
        }
      }
      lives.clear();
      await agent.close();
      await unsubscribeConsole?.().catch(() => undefined);
    },
  };

  async function hvCall(name: string, what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      if (err instanceof MvirtError) throw err;
      throw new MvirtError('HYPERVISOR_ERROR', `${what} of VM ${name} failed: ${String(err)}`, {
        cause: err,
      });
    }
  }

  // ------------------------------------------------------------ recovery

  /**
   * Re-attach to every VM whose hypervisor process outlived the previous
   * daemon (pid and start time must match; the backend checks), and record
   * the truth for the rest. A process that is ours but cannot be re-attached
   * is killed: no orphans.
   */
  async function recover(): Promise<void> {
    const runtimes = vms.allRuntime();
    let adopted = 0;
    for (const rt of runtimes) {
      const vm = vms.get(rt.vmId);
      if (!vm) continue; // row cascaded away with its VM
      const dir = dirOf(vm.id);
      const vlog = log.child({ vmId: vm.id, vm: vm.name });
      const hv = hypervisors.get(rt.backend);
      let running: RunningVm | undefined;
      let why = `backend ${rt.backend} is unknown`;
      if (hv) {
        try {
          running = await hv.attach(rt, dir, plain(vlog));
        } catch (err) {
          why = err instanceof Error ? err.message : String(err);
        }
      }
      if (!hv || !running || !isActive(vm.state)) {
        if (isSameProcess(rt.pid, rt.startTime)) {
          vlog.warn(
            { pid: rt.pid, why },
            'killing a hypervisor process that cannot be re-attached',
          );
          try {
            process.kill(rt.pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
        running?.signal('SIGKILL');
        vms.deleteRuntime(vm.id);
        removeSockets(dir, rt.sockets);
        if (isActive(vm.state)) {
          const to = vm.state === 'stopping' ? 'stopped' : 'failed';
          transition(vm.id, to, `not re-attached after a daemon restart: ${why}`, 'warn');
        }
        continue;
      }
      let agentExpected = true;
      try {
        agentExpected = (await images.resolve(vm.image)).agent;
      } catch {
        agentExpected = vm.agentVersion !== undefined || vm.state !== 'running';
      }
      const live = newLive({
        id: vm.id,
        hv,
        dir,
        log: vlog,
        agentExpected,
        agentOverNetwork: vm.network.agentOverNetwork === true,
      });
      live.running = running;
      lives.set(vm.id, live);
      watchExit(live, running);
      if (running.runtime.pid !== rt.pid) vms.putRuntime(vm.id, running.runtime, rt.startedAt);
      adopted++;
      audit(`${vm.name}: re-attached after a daemon restart`, [vm.id], { pid: rt.pid });
      publishState(vms.get(vm.id)!);
      if (vm.state === 'starting') armBootTimer(live);
      void attachConsole(live);
      if (agentExpected) {
        connectAgent(live).catch((err: unknown) => {
          vlog.warn({ err: String(err) }, 'agent channel not re-attached yet; retrying');
          scheduleAgentReconnect(live);
        });
      }
      if (vm.state === 'stopping') {
        // The previous daemon was stopping it: finish the job.
        void withLock(vm.id, () => stopProcess(live, running, options.stopTimeoutMs)).catch(
          (err: unknown) => vlog.error({ err }, 'stop after restart failed'),
        );
      }
    }
    // Tokens of re-attached VMs back in memory; TAPs of everything else removed.
    await network
      .recovered(new Set(lives.keys()))
      .catch((err: unknown) => log.warn({ err }, 'network recovery incomplete'));
    // VMs marked up without a runtime row never got a process (or lost it).
    for (const vm of vms.list()) {
      if (!ACTIVE_STATES.includes(vm.state) || lives.has(vm.id)) continue;
      const to = vm.state === 'stopping' ? 'stopped' : 'failed';
      transition(vm.id, to, 'no hypervisor process after a daemon restart', 'warn');
    }
    log.info({ adopted, runtimeRows: runtimes.length }, 'recovery done');
  }
}
