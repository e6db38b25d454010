/**
 * The job manager: job.run and friends, placement of jobs onto VMs (a service
 * VM, an ephemeral VM booted for the job, or a pool VM), the FIFO queue when
 * the host is at capacity, output and exit records from the agents, and the
 * one `transition()` every job state change goes through.
 *
 * Delivery: a job runs at most once (the agent deduplicates exec by job id,
 * so an exec may safely be sent again) and is never silently lost: when its
 * VM stops, when the agent comes back without it, or when the agent stays
 * away longer than `agentGraceMs`, the job ends `lost` with a reason.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Bus } from '../broker/types.js';
import type { EventLog } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import type { JobRepo, JobSpec } from '../store/index.js';
import type { VmManager } from '../vm/manager.js';
import type { Exit, Hello, Output } from '../../protocol/agent.js';
import { MvirtError } from '../../protocol/errors.js';
import {
  JOB_LOGS_PAGE_BYTES,
  JOB_WAIT_OUTPUT_BYTES,
  type JobLogs,
  type JobRecord,
  type JobState,
  type JobTarget,
  type ParamsOf,
  type VmRecord,
  type VmState,
} from '../../protocol/rpc.js';
import type { Topics } from '../../protocol/topics.js';
import { createOutputLog, decodeChunks, type OutputLog, type OutputLogOptions } from './output.js';
import type { VmDestroyer } from './destroyer.js';
import type { PoolManager } from './pools.js';
import { canTransitionJob, isTerminal } from './states.js';

export interface JobManagerOptions {
  output: OutputLogOptions;
  /** A job sent without a target goes to this pool when it exists. */
  defaultPool?: string;
  /** How long a job survives its agent being away (channel closed, VM alive). */
  agentGraceMs: number;
  /** Timeout of the exec request itself (not of the job). */
  execTimeoutMs: number;
  /** After a cancel, how long job.cancel waits for the job to end before answering. */
  cancelWaitMs: number;
  /** How long a finished job's retained state stays on its topic. */
  retainFinishedMs: number;
  /** Pause an agent's channel while this much of its output is still on the way to controllers. */
  outputHighBytes: number;
  outputLowBytes: number;
}

export const DEFAULT_JOB_OPTIONS: Omit<JobManagerOptions, 'output'> = {
  agentGraceMs: 60_000,
  execTimeoutMs: 30_000,
  cancelWaitMs: 15_000,
  retainFinishedMs: 10 * 60_000,
  outputHighBytes: 4 * 1024 * 1024,
  outputLowBytes: 1024 * 1024,
};

/** VM metadata key that ties an ephemeral VM to its job (survives a daemon restart). */
export const META_JOB = 'mvirt.job';

type Phase = 'waiting' | 'placing' | 'running';

/** What is held in memory for a job that is not finished. */
interface Active {
  id: string;
  target: JobTarget;
  phase: Phase;
  vmId: string | null;
  /** The VM was made for this job (ephemeral or pool): destroyed afterwards. */
  ownsVm: boolean;
  out: OutputLog | null;
  cancelRequested: boolean;
  /** A replay request is on its way to the agent (one at a time). */
  replaying: boolean;
  /** The exit record, kept while output before it is still missing. */
  exitRecord?: Exit;
  /** An exec has gone out: from now on a cancel must reach the guest. */
  execSent: boolean;
  /** The exec could not go out (no agent connected yet): the next hello sends it. */
  awaitingAgent?: boolean;
  graceTimer?: NodeJS.Timeout;
}

export interface JobManagerDeps {
  repo: JobRepo;
  destroyer: VmDestroyer;
  vms: VmManager;
  pools: PoolManager;
  events: EventLog;
  bus: Bus;
  topics: Topics;
  log: MvirtLogger;
  options: JobManagerOptions;
}

export type JobManager = ReturnType<typeof createJobManager>;

const COMPONENT = 'job';

export function createJobManager(deps: JobManagerDeps) {
  const { repo, vms, pools, events, bus, topics, options, destroyer } = deps;
  const log = deps.log.child({ component: COMPONENT });
  const active = new Map<string, Active>();
  const ended = new EventEmitter();
  ended.setMaxListeners(0);
  /** Every transition, for observers (metrics): (record, previous state). */
  const changes = new EventEmitter();
  changes.setMaxListeners(0);
  let closing = false;
  /** Output bytes published but not yet delivered, per VM (backpressure). */
  const inFlight = new Map<string, number>();

  const now = (): string => new Date().toISOString();

  // ------------------------------------------------------------ records

  function record(id: string): JobRecord {
    const rec = repo.get(id);
    if (!rec) throw new MvirtError('JOB_NOT_FOUND', `no job with id ${id}`);
    const pos = queuePosition(id);
    return pos === undefined ? rec : { ...rec, queuePosition: pos };
  }

  function waiting(): Active[] {
    return [...active.values()].filter((a) => a.phase === 'waiting');
  }

  function queuePosition(id: string): number | undefined {
    const i = waiting().findIndex((a) => a.id === id);
    return i < 0 ? undefined : i + 1;
  }

  function publishJob(rec: JobRecord): void {
    bus
      .publish(topics.jobState(rec.jobId), JSON.stringify(rec), { retain: true, qos: 1 })
      .catch((err: unknown) => log.warn({ err, jobId: rec.jobId }, 'publish failed'));
  }

  // ------------------------------------------------------------ the one transition

  /**
   * The only way a job changes state: checks the transition table, persists
   * (compare-and-set, with its event linked to the job and its VM), publishes
   * the retained record and logs. Finishing also settles the in-memory entry.
   */
  function transition(
    id: string,
    to: JobState,
    reason: string | null,
    extra: { exit?: Exit; level?: 'audit' | 'warn' | 'error' } = {},
  ): JobRecord {
    const cur = repo.get(id);
    if (!cur) throw new MvirtError('JOB_NOT_FOUND', `no job with id ${id}`);
    if (!canTransitionJob(cur.state, to)) {
      throw new MvirtError('INTERNAL', `job ${id} is ${cur.state} and cannot become ${to}`);
    }
    const a = active.get(id);
    a?.out?.flush();
    const at = now();
    repo.transaction(() => {
      if (!repo.setState(id, cur.state, to, reason, at)) {
        throw new MvirtError('INTERNAL', `job ${id} changed state concurrently`);
      }
      if (to === 'running') repo.setStarted(id, at);
      if (isTerminal(to)) {
        const e = extra.exit;
        repo.setFinish(
          id,
          {
            exitCode: e?.exitCode ?? null,
            signal: e?.signal ?? null,
            oomKilled: e?.oomKilled ?? false,
          },
          at,
        );
      }
      events.append({
        level: extra.level ?? 'audit',
        component: COMPONENT,
        message: `job ${id}: ${cur.state} → ${to}${reason ? ` (${reason})` : ''}`,
        objects: cur.vm ? [id, cur.vm] : [id],
        data: { from: cur.state, to, reason, vm: cur.vm },
      });
    });
    const rec = record(id);
    publishJob(rec);
    log.info({ jobId: id, vmId: rec.vm, from: cur.state, to, reason }, 'job state');
    if (isTerminal(to)) settle(id, rec);
    changes.emit('state', rec, cur.state);
    return rec;
  }

  /** A job reached a final state: let go of its VM and wake up the queue. */
  function settle(id: string, rec: JobRecord): void {
    const a = active.get(id);
    active.delete(id);
    if (a) {
      a.out?.close();
      if (a.graceTimer) clearTimeout(a.graceTimer);
      if (a.vmId) {
        if (a.ownsVm) destroyVm(a.vmId, `its job ${id} ended`);
        else if (![...active.values()].some((o) => o.vmId === a.vmId && o.phase === 'running'))
          vms.setBusy(a.vmId, false);
      }
    }
    ended.emit(id, rec);
    // The broker keeps retained messages in memory: a finished job's state is
    // cleared after a while (job.get still has it) so that they do not pile up.
    const t = setTimeout(() => {
      bus
        .publish(topics.jobState(id), '', { retain: true, qos: 1 })
        .catch((err: unknown) => log.debug({ err, jobId: id }, 'clear failed'));
    }, options.retainFinishedMs);
    t.unref();
    republishQueue();
    pump();
  }

  function destroyVm(vmId: string, why: string): void {
    // While shutting down, leave it: recover() destroys it on the next start.
    if (closing) return;
    destroyer.destroy(vmId, why, () => {
      pools.release(vmId);
      pump();
    });
  }

  /** Queue positions shift when a job leaves the queue: republish those still waiting. */
  function republishQueue(): void {
    // One pass: record() would look each position up again (quadratic in the queue).
    waiting().forEach((a, i) => {
      const rec = repo.get(a.id);
      if (rec) publishJob({ ...rec, queuePosition: i + 1 });
    });
  }

  // ------------------------------------------------------------ placement

  function resolveTarget(p: ParamsOf<'job.run'>): JobTarget {
    if (p.vm !== undefined) {
      const vm = vms.get(p.vm);
      if (vm.kind !== 'service') {
        throw new MvirtError(
          'VM_BAD_STATE',
          `VM ${vm.name} is ${vm.kind === 'ephemeral' ? 'an ephemeral VM of another job or pool' : vm.kind}; jobs run on service VMs, images or pools`,
        );
      }
      if (!['ready', 'busy', 'starting'].includes(vm.state)) {
        throw new MvirtError(
          'VM_BAD_STATE',
          `VM ${vm.name} is ${vm.state}; start it first (mvirt vm start ${vm.name})`,
          { details: { state: vm.state } },
        );
      }
      return { kind: 'vm', vm: vm.id };
    }
    if (p.pool !== undefined) {
      pools.get(p.pool); // POOL_NOT_FOUND
      return { kind: 'pool', pool: p.pool };
    }
    if (p.image !== undefined) return { kind: 'image', image: p.image };
    const dp = options.defaultPool;
    if (dp !== undefined && pools.exists(dp)) return { kind: 'pool', pool: dp };
    return { kind: 'image', image: vms.defaults.image };
  }

  /**
   * Ephemeral VMs being created for jobs that are not `starting` yet: their
   * resources are not in vms.allocated(), but they will be.
   */
  function creatingEphemeral(): { vms: number; vcpus: number; memoryMiB: number } {
    const r = { vms: 0, vcpus: 0, memoryMiB: 0 };
    for (const o of active.values()) {
      if (o.phase !== 'placing' || o.target.kind !== 'image') continue;
      if (o.vmId !== null && safeGet(o.vmId)?.state !== 'stopped') continue;
      const spec = repo.spec(o.id);
      r.vms++;
      r.vcpus += spec?.vcpus ?? vms.defaults.vcpus;
      r.memoryMiB += spec?.memoryMiB ?? vms.defaults.memoryMiB;
    }
    return r;
  }

  /** Serialised walk over the waiting jobs, oldest first. */
  let pumping = false;
  let pumpAgain = false;
  function pump(): void {
    if (closing) return;
    if (pumping) {
      pumpAgain = true;
      return;
    }
    pumping = true;
    const queued = waiting().length;
    try {
      do {
        pumpAgain = false;
        let capacityBlocked = false;
        const reserved = creatingEphemeral();
        for (const a of waiting()) {
          if (a.target.kind === 'vm') {
            startOn(a, a.target.vm, false);
            continue;
          }
          if (a.target.kind === 'pool') {
            const vmId = pools.claim(a.target.pool, a.id);
            if (vmId) startOn(a, vmId, true);
            else pools.demand(a.target.pool);
            continue;
          }
          // An image: an ephemeral VM, in order, while capacity allows.
          if (capacityBlocked) continue;
          const spec = repo.spec(a.id);
          const size = {
            vcpus: spec?.vcpus ?? vms.defaults.vcpus,
            memoryMiB: spec?.memoryMiB ?? vms.defaults.memoryMiB,
          };
          if (!vms.canAdmit(size, reserved)) {
            capacityBlocked = true;
            continue;
          }
          a.phase = 'placing';
          reserved.vms++;
          reserved.vcpus += size.vcpus;
          reserved.memoryMiB += size.memoryMiB;
          void bootEphemeral(a, a.target.image, size);
        }
      } while (pumpAgain);
    } finally {
      pumping = false;
    }
    // Jobs left the queue: the positions of those still in it moved up.
    if (waiting().length < queued) republishQueue();
    pools.reconcileAll();
  }

  async function bootEphemeral(
    a: Active,
    image: string,
    size: { vcpus: number; memoryMiB: number },
  ): Promise<void> {
    let vm: VmRecord | undefined;
    try {
      vm = await vms.create({
        name: `job-${a.id.slice(4, 16)}`,
        image,
        vcpus: size.vcpus,
        memoryMiB: size.memoryMiB,
        kind: 'ephemeral',
        metadata: { [META_JOB]: a.id },
      });
      a.vmId = vm.id;
      a.ownsVm = true;
      repo.setVm(a.id, vm.id, now());
      if (a.cancelRequested) return destroyVm(vm.id, 'its job was cancelled while booting');
      await vms.start(vm.id, true);
      if (!active.has(a.id)) return destroyVm(vm.id, 'its job ended while booting');
      void execute(a, vm.id);
    } catch (err) {
      if (err instanceof MvirtError && err.code === 'CAPACITY_EXCEEDED' && active.has(a.id)) {
        // Someone took the room between the check and the boot: wait again.
        a.phase = 'waiting';
        a.vmId = null;
        a.ownsVm = false;
        repo.setVm(a.id, null, now());
        if (vm) destroyVm(vm.id, 'capacity taken meanwhile');
        return;
      }
      if (vm) destroyVm(vm.id, 'its boot failed');
      if (active.has(a.id))
        transition(a.id, 'failed', `the job's VM could not be booted: ${errText(err)}`, {
          level: 'error',
        });
    }
  }

  /** Put a waiting job onto a VM that is (or will be) ready. */
  function startOn(a: Active, vmId: string, owns: boolean): void {
    a.phase = 'placing';
    a.vmId = vmId;
    a.ownsVm = owns;
    repo.setVm(a.id, vmId, now());
    void (async () => {
      try {
        await vms.waitForState(vmId, ['ready', 'busy'], ['failed', 'stopped', 'stopping']);
      } catch (err) {
        if (active.has(a.id))
          transition(a.id, 'failed', `its VM did not become ready: ${errText(err)}`, {
            level: 'error',
          });
        return;
      }
      await execute(a, vmId);
    })();
  }

  /** Send the exec (again, when `fromSeq` is given: the agent deduplicates and replays). */
  async function execute(a: Active, vmId: string, fromSeq?: number): Promise<void> {
    const spec = repo.spec(a.id);
    if (!spec || !active.has(a.id)) return;
    a.out ??= openOutput(a.id, vmId);
    if (fromSeq === undefined) vms.setBusy(vmId, true);
    a.execSent = true;
    try {
      await vms.callAgent(
        vmId,
        'exec',
        {
          jobId: a.id,
          argv: spec.argv,
          ...(spec.env ? { env: spec.env } : {}),
          ...(spec.cwd !== undefined ? { cwd: spec.cwd } : {}),
          ...(spec.stdin !== undefined && fromSeq === undefined
            ? { stdin: new Uint8Array(spec.stdin) }
            : {}),
          ...(spec.timeoutMs !== undefined ? { timeoutMs: spec.timeoutMs } : {}),
          ...(fromSeq !== undefined ? { fromSeq } : {}),
        },
        options.execTimeoutMs,
      );
    } catch (err) {
      if (!active.has(a.id)) return;
      if (fromSeq !== undefined) {
        log.warn({ jobId: a.id, vmId, err: errText(err) }, 'output replay request failed');
        return;
      }
      if (err instanceof MvirtError && err.code === 'AGENT_ERROR') {
        // The command could not be started (no such file, bad cwd, …).
        if (repo.get(a.id)?.state === 'queued') transition(a.id, 'running', 'exec sent');
        transition(a.id, 'failed', `the command could not be started: ${err.message}`, {
          level: 'warn',
        });
        return;
      }
      if (err instanceof MvirtError && err.code === 'AGENT_UNAVAILABLE') {
        // Nothing went out: the VM is up but its agent has not (re)connected
        // yet, e.g. right after a daemon restart. Its next hello sends it.
        a.execSent = false;
        a.awaitingAgent = true;
        log.info({ jobId: a.id, vmId }, 'waiting for the agent to connect before exec');
        armGrace(a, `the agent did not connect: ${errText(err)}`);
        return;
      }
      // Not delivered or not answered: the hello after the agent's reconnect
      // tells whether it runs; the grace timer ends it otherwise.
      log.warn({ jobId: a.id, vmId, err: errText(err) }, 'exec not acknowledged');
      armGrace(a, `the agent did not acknowledge the job: ${errText(err)}`);
      return;
    }
    markRunning(a);
  }

  function markRunning(a: Active): void {
    a.phase = 'running';
    if (a.graceTimer) clearTimeout(a.graceTimer);
    a.graceTimer = undefined;
    if (repo.get(a.id)?.state === 'queued') transition(a.id, 'running', null);
  }

  function armGrace(a: Active, reason: string): void {
    if (a.graceTimer) return;
    a.graceTimer = setTimeout(() => {
      a.graceTimer = undefined;
      if (active.has(a.id)) transition(a.id, 'lost', reason, { level: 'warn' });
    }, options.agentGraceMs);
  }

  function openOutput(id: string, vmId: string): OutputLog {
    return createOutputLog({
      jobId: id,
      repo,
      options: options.output,
      publish: (chunk, bytes) => {
        // The live copy goes to controllers; while too much of it is still on
        // the way, stop reading this VM's agent channel.
        const n = (inFlight.get(vmId) ?? 0) + bytes;
        inFlight.set(vmId, n);
        if (n >= options.outputHighBytes) vms.holdAgent(vmId, true);
        bus
          .publish(topics.jobOutput(id), JSON.stringify(chunk), { qos: 0 })
          .catch((err: unknown) => log.debug({ err, jobId: id }, 'output publish failed'))
          .finally(() => {
            const left = (inFlight.get(vmId) ?? bytes) - bytes;
            if (left <= 0) inFlight.delete(vmId);
            else inFlight.set(vmId, left);
            if (left <= options.outputLowBytes) vms.holdAgent(vmId, false);
          });
      },
      onError: (err) => log.error({ err, jobId: id }, 'cannot store job output'),
    });
  }

  // ------------------------------------------------------------ from the agents

  /** The job `jobId` if it runs on `vmId`: a guest can only speak for its own jobs. */
  function ownJob(vmId: string, jobId: string, kind: string): Active | undefined {
    const a = active.get(jobId);
    if (!a || a.vmId !== vmId) {
      log.debug({ vmId, jobId, kind }, 'agent message for a job that is not on this VM; dropped');
      return undefined;
    }
    return a;
  }

  function onOutput(vmId: string, m: Output): void {
    const a = ownJob(vmId, m.jobId, 'output');
    if (!a) return;
    if (a.phase !== 'running') markRunning(a);
    a.out ??= openOutput(a.id, vmId);
    const r = a.out.append({ seq: m.seq, stream: m.stream, data: Buffer.from(m.data) });
    if (r === 'gap') requestReplay(a, vmId);
    finishIfComplete(a);
  }

  /**
   * Ask the agent for everything from our nextSeq (an exec it recognises as a
   * duplicate: it replays its kept output, then the exit record, then
   * replies). Once the reply is in, a hole that is still there is output the
   * agent no longer had: recorded as dropped, and the job goes on.
   */
  function requestReplay(a: Active, vmId: string): void {
    if (a.replaying || !a.out) return;
    a.replaying = true;
    void execute(a, vmId, a.out.nextSeq).finally(() => {
      a.replaying = false;
      if (!active.has(a.id) || !a.out) return;
      const from = a.out.nextSeq;
      const skipped = a.out.skipGap(a.exitRecord?.seq);
      if (skipped > 0)
        log.warn(
          { jobId: a.id, from, skipped },
          'output chunks lost: the agent could not replay them',
        );
      finishIfComplete(a);
    });
  }

  function onExit(vmId: string, m: Exit): void {
    const a = ownJob(vmId, m.jobId, 'exit');
    if (!a) return;
    a.out ??= openOutput(a.id, vmId);
    a.exitRecord = m;
    // The exit overtook output we have not stored: the replay brings it.
    if (m.seq > a.out.nextSeq) requestReplay(a, vmId);
    finishIfComplete(a);
  }

  /** The exit record is in and every chunk before it: the job is over. */
  function finishIfComplete(a: Active): void {
    const m = a.exitRecord;
    if (!m || !a.out || a.out.nextSeq < m.seq || !active.has(a.id)) return;
    if (a.phase !== 'running') markRunning(a);
    const [to, reason]: [JobState, string | null] = a.cancelRequested
      ? ['cancelled', 'cancelled by request']
      : m.timedOut
        ? ['timed_out', `timed out after ${repo.spec(a.id)?.timeoutMs ?? '?'} ms`]
        : m.error !== undefined
          ? ['failed', `the command could not be started: ${m.error}`]
          : m.exitCode === 0
            ? ['succeeded', null]
            : [
                'failed',
                m.oomKilled
                  ? 'killed by the out-of-memory killer'
                  : m.signal
                    ? `killed by ${m.signal}`
                    : `exit code ${String(m.exitCode)}`,
              ];
    transition(a.id, to, reason, { exit: m, level: to === 'succeeded' ? 'audit' : 'warn' });
  }

  /** After every hello: resume what the agent still has, give up on what it forgot. */
  function onHello(vmId: string, hello: Hello): void {
    const known = new Map(hello.jobs.map((j) => [j.jobId, j]));
    for (const a of [...active.values()]) {
      if (a.vmId !== vmId || a.phase === 'waiting') continue;
      if (a.graceTimer) clearTimeout(a.graceTimer);
      a.graceTimer = undefined;
      const k = known.get(a.id);
      if (!k && a.awaitingAgent) {
        a.awaitingAgent = false;
        void execute(a, vmId);
        continue;
      }
      if (!k) {
        // Sent but unknown: the agent restarted and lost it (it may even have
        // run); sending it again could run it twice. Not sent yet: startOn sends it.
        if (a.execSent)
          transition(a.id, 'lost', 'the agent restarted and no longer knows the job', {
            level: 'warn',
          });
        continue;
      }
      // Known: ask for everything after what we stored (duplicates are ignored).
      a.out ??= openOutput(a.id, vmId);
      if (a.phase !== 'running') markRunning(a);
      if (k.state === 'exited' || k.lastSeq >= a.out.nextSeq) requestReplay(a, vmId);
      // A cancel the agent may not have heard (it was away): say it again.
      if (a.cancelRequested && k.state === 'running') void sendCancel(a);
    }
  }

  /**
   * SIGTERM to the job's process group; the agent escalates to SIGKILL. Not
   * delivered (agent away): the next hello that still lists the job sends it again.
   */
  async function sendCancel(a: Active): Promise<void> {
    if (!a.vmId) return;
    await vms
      .callAgent(a.vmId, 'signal', { jobId: a.id, signal: 'SIGTERM' }, options.execTimeoutMs)
      .catch((err: unknown) =>
        log.warn({ jobId: a.id, err: errText(err) }, 'cancel not delivered (yet)'),
      );
  }

  function onAgentGone(vmId: string): void {
    for (const a of active.values()) {
      if (a.vmId === vmId && a.phase !== 'waiting')
        armGrace(
          a,
          `the agent disconnected and did not come back within ${options.agentGraceMs} ms`,
        );
    }
  }

  /** A VM stopped or failed: its jobs are lost (or failed, if it never became ready). */
  function onVmState(vm: VmRecord, from: VmState): void {
    if (vm.state === 'ready' || vm.state === 'stopped' || vm.state === 'failed') pump();
    if (vm.state !== 'stopped' && vm.state !== 'failed' && vm.state !== 'stopping') return;
    for (const a of [...active.values()]) {
      if (a.vmId !== vm.id || a.phase === 'waiting') continue;
      if (a.phase === 'placing' && from === 'starting') continue; // the boot's waiter reports it
      if (a.cancelRequested) {
        transition(a.id, 'cancelled', `cancelled; its VM is ${vm.state}`);
        continue;
      }
      const st = repo.get(a.id)?.state;
      const why = `its VM ${vm.name} is ${vm.state}${vm.stateReason ? ` (${vm.stateReason})` : ''}`;
      if (st === 'queued' && !a.ownsVm) transition(a.id, 'failed', why, { level: 'warn' });
      else transition(a.id, 'lost', why, { level: 'warn' });
    }
  }

  vms.setJobHooks({ output: onOutput, exit: onExit, hello: onHello, agentGone: onAgentGone });
  pools.onVmAvailable(pump);
  const offState = vms.onStateChange(onVmState);

  // ------------------------------------------------------------ public operations

  function waitEnd(id: string, ms?: number): Promise<JobRecord | null> {
    const rec = repo.get(id);
    if (!rec) return Promise.reject(new MvirtError('JOB_NOT_FOUND', `no job with id ${id}`));
    if (isTerminal(rec.state)) return Promise.resolve(rec);
    return new Promise((resolve) => {
      const done = (r: JobRecord | null): void => {
        if (timer) clearTimeout(timer);
        ended.off(id, onEnd);
        resolve(r);
      };
      const onEnd = (r: JobRecord): void => done(r);
      const timer = ms === undefined ? undefined : setTimeout(() => done(null), ms);
      ended.on(id, onEnd);
    });
  }

  /** stdout and stderr of a finished job for job.run {wait}, each cut at JOB_WAIT_OUTPUT_BYTES. */
  function collected(id: string): { stdout: string; stderr: string; truncated: boolean } {
    const bufs = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
    const size = { stdout: 0, stderr: 0 };
    let truncated = (repo.get(id)?.dropped.chunks ?? 0) > 0;
    let from = 0;
    for (;;) {
      const page = repo.chunks(id, from, JOB_LOGS_PAGE_BYTES);
      for (const c of page.chunks) {
        const room = JOB_WAIT_OUTPUT_BYTES - size[c.stream];
        if (room <= 0) {
          truncated = true;
          continue;
        }
        const part = c.data.length > room ? c.data.subarray(0, room) : c.data;
        if (part.length < c.data.length) truncated = true;
        bufs[c.stream].push(part);
        size[c.stream] += part.length;
      }
      if (!page.more || page.chunks.length === 0) break;
      from = page.chunks.at(-1)!.seq + 1;
    }
    return {
      stdout: Buffer.concat(bufs.stdout).toString('utf8'),
      stderr: Buffer.concat(bufs.stderr).toString('utf8'),
      truncated,
    };
  }

  function safeGet(id: string): VmRecord | undefined {
    try {
      return vms.get(id);
    } catch {
      return undefined;
    }
  }

  return {
    async run(p: ParamsOf<'job.run'>): Promise<JobRecord & { stdout?: string; stderr?: string }> {
      if (closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
      const target = resolveTarget(p);
      if (target.kind === 'image') await vms.checkImage(target.image);
      const id = `job-${randomBytes(8).toString('hex')}`;
      const spec: JobSpec = { id, target, argv: p.argv };
      if (p.env) spec.env = p.env;
      if (p.cwd !== undefined) spec.cwd = p.cwd;
      if (p.stdin !== undefined) spec.stdin = Buffer.from(p.stdin);
      if (p.timeoutMs !== undefined) spec.timeoutMs = p.timeoutMs;
      if (target.kind === 'image') {
        spec.vcpus = p.vcpus ?? vms.defaults.vcpus;
        spec.memoryMiB = p.memoryMiB ?? vms.defaults.memoryMiB;
      }
      repo.transaction(() => {
        repo.insert(spec, now());
        events.append({
          level: 'audit',
          component: COMPONENT,
          message: `job ${id}: queued (${p.argv.join(' ').slice(0, 200)})`,
          objects: target.kind === 'vm' ? [id, target.vm] : [id],
          data: { target, argv: p.argv.slice(0, 32) },
        });
      });
      active.set(id, {
        id,
        target,
        phase: 'waiting',
        vmId: null,
        ownsVm: false,
        out: null,
        cancelRequested: false,
        replaying: false,
        execSent: false,
      });
      publishJob(record(id));
      pump();
      if (!p.wait) return record(id);
      const done = (await waitEnd(id))!;
      return { ...done, ...collected(id) };
    },

    get: (id: string): JobRecord => record(id),

    /** Jobs by state as stored. */
    countByState: () => repo.countByState(),

    onStateChange(fn: (rec: JobRecord, from: JobState) => void): () => void {
      changes.on('state', fn);
      return () => changes.off('state', fn);
    },

    list(q: ParamsOf<'job.list'> = {}): JobRecord[] {
      const vm = q?.vm !== undefined ? (vms.resolveId(q.vm) ?? q.vm) : undefined;
      return repo
        .list({ vm, state: q?.state, limit: q?.limit })
        .map((r) => (r.state === 'queued' ? record(r.jobId) : r));
    },

    async cancel(id: string): Promise<JobRecord> {
      const rec = record(id);
      if (isTerminal(rec.state)) return rec;
      const a = active.get(id);
      if (!a) return rec;
      a.cancelRequested = true;
      events.append({
        level: 'audit',
        component: COMPONENT,
        message: `job ${id}: cancel`,
        objects: rec.vm ? [id, rec.vm] : [id],
      });
      if (rec.state === 'queued' && !a.execSent) {
        return transition(id, 'cancelled', 'cancelled before it started');
      }
      await sendCancel(a);
      return (await waitEnd(id, options.cancelWaitMs)) ?? record(id);
    },

    logs(p: ParamsOf<'job.logs'>): JobLogs {
      active.get(p.jobId)?.out?.flush();
      const rec = record(p.jobId);
      const firstSeq = repo.firstSeq(p.jobId) ?? rec.nextSeq;
      const from = Math.max(p.fromSeq ?? 0, 0);
      const page = repo.chunks(p.jobId, from, p.maxBytes ?? JOB_LOGS_PAGE_BYTES);
      const last = page.chunks.at(-1);
      return {
        chunks: decodeChunks(page.chunks),
        nextSeq: last ? last.seq + 1 : Math.max(from, rec.nextSeq),
        more: page.more,
        firstSeq,
      };
    },

    /** After the VM manager's recovery: pick up the jobs of the previous daemon. */
    recover(): void {
      for (const rec of [...repo.inState('running'), ...repo.inState('queued')]) {
        const vm = rec.vm ? safeGet(rec.vm) : undefined;
        const owns = vm !== undefined && vm.kind === 'ephemeral';
        const a: Active = {
          id: rec.jobId,
          target: rec.target,
          phase: rec.state === 'running' ? 'running' : 'waiting',
          vmId: rec.vm,
          ownsVm: owns,
          out: null,
          cancelRequested: false,
          replaying: false,
          execSent: rec.state === 'running',
        };
        active.set(a.id, a);
        const alive =
          vm !== undefined && ['starting', 'ready', 'busy', 'paused'].includes(vm.state);
        if (rec.state === 'running') {
          if (!alive) {
            transition(a.id, 'lost', 'its VM did not survive the daemon restart', {
              level: 'warn',
            });
            continue;
          }
          a.out = openOutput(a.id, vm.id);
          if (rec.target.kind === 'pool') pools.restoreClaim(rec.target.pool, vm.id, a.id);
          armGrace(a, 'its agent did not come back after the daemon restart');
          // The agent's hello (it reconnects to the new daemon) resumes the
          // output; if it came before this point, act on it now.
          const hello = vms.agentHello(vm.id);
          if (hello) onHello(vm.id, hello);
          continue;
        }
        if (alive && rec.vm) {
          // Placed before the restart: the exec may or may not have arrived; the
          // agent deduplicates, so it is sent again once the VM is ready.
          if (rec.target.kind === 'pool') pools.restoreClaim(rec.target.pool, rec.vm, a.id);
          startOn(a, rec.vm, owns);
          continue;
        }
        if (vm && owns) destroyVm(vm.id, 'its boot was interrupted by a daemon restart');
        a.vmId = null;
        a.ownsVm = false;
        repo.setVm(a.id, null, now());
      }
      // Job VMs whose job is over (the daemon died before destroying them).
      for (const vm of vms.tagged(META_JOB)) {
        if (vm.kind === 'ephemeral' && !active.has(vm.metadata[META_JOB]!))
          destroyVm(vm.id, 'left over from a finished job');
      }
      log.info({ jobs: active.size }, 'job recovery done');
      republishQueue();
      pump();
    },

    pump,

    /** Stop acting; resolves once the VM destroys already under way are done. */
    async close(): Promise<void> {
      closing = true;
      offState();
      for (const a of active.values()) {
        a.out?.close();
        if (a.graceTimer) clearTimeout(a.graceTimer);
      }
      await destroyer.drain();
    },
  };
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
