/**
 * What the job manager hears, straight from the agent sessions
 * (host/agent/sessions.ts) and the VM manager's state changes: output and
 * exit records, every hello (replay after a reconnect, or the job is lost),
 * the agent going away (grace timer), and VMs that stop under their jobs.
 */
import type { Exit, Hello, Output } from '../../protocol/agent.js';
import type { JobState, VmRecord, VmState } from '../../protocol/rpc.js';
import { errText, type Active, type JobContext } from './context.js';
import { isDownVm, isInactiveVm } from '../../protocol/states.js';

export function agentPart(
  ctx: JobContext,
): Pick<JobContext, 'onHello' | 'sendCancel'> & { off(): void } {
  const { repo, active, options } = ctx;

  /** The job `jobId` if it runs on `vmId`: a guest can only speak for its own jobs. */
  function ownJob(vmId: string, jobId: string, kind: string): Active | undefined {
    const a = active.get(jobId);
    if (!a || a.vmId !== vmId) {
      ctx.log.debug(
        { vmId, jobId, kind },
        'agent message for a job that is not on this VM; dropped',
      );
      return undefined;
    }
    return a;
  }

  function onOutput(vmId: string, m: Output): void {
    const a = ownJob(vmId, m.jobId, 'output');
    if (!a) return;
    if (a.phase !== 'running') ctx.markRunning(a);
    a.out ??= ctx.openOutput(a.id, vmId);
    const r = a.out.append({ seq: m.seq, stream: m.stream, data: Buffer.from(m.data) });
    if (r === 'refused') return refuseSeq(a, vmId, 'output', m.seq);
    if (r === 'gap') requestReplay(a, vmId);
    finishIfComplete(a);
  }

  /** A sequence number the job cannot have reached: the message is dropped, counted per VM. */
  function refuseSeq(a: Active, vmId: string, kind: string, seq: number): void {
    ctx.log.debug(
      { jobId: a.id, vmId, kind, seq, nextSeq: a.out?.nextSeq },
      'implausible seq; refused',
    );
    ctx.events.guest.refuse(
      vmId,
      `${kind} records refused (sequence number beyond the job's output)`,
    );
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
    void ctx.execute(a, vmId, a.out.nextSeq).finally(() => {
      a.replaying = false;
      if (!active.has(a.id) || !a.out) return;
      const from = a.out.nextSeq;
      const skipped = a.out.skipGap(a.exitRecord?.seq);
      if (skipped > 0)
        ctx.log.warn(
          { jobId: a.id, from, skipped },
          'output chunks lost: the agent could not replay them',
        );
      finishIfComplete(a);
    });
  }

  function onExit(vmId: string, m: Exit): void {
    const a = ownJob(vmId, m.jobId, 'exit');
    if (!a) return;
    a.out ??= ctx.openOutput(a.id, vmId);
    if (!a.out.plausible(m.seq)) return refuseSeq(a, vmId, 'exit', m.seq);
    a.exitRecord = m;
    // The exit overtook output we have not stored: the replay brings it.
    if (m.seq > a.out.nextSeq) requestReplay(a, vmId);
    finishIfComplete(a);
  }

  /** The exit record is in and every chunk before it: the job is over. */
  function finishIfComplete(a: Active): void {
    const m = a.exitRecord;
    if (!m || !a.out || a.out.nextSeq < m.seq || !active.has(a.id)) return;
    if (a.phase !== 'running') ctx.markRunning(a);
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
    ctx.transition(a.id, to, reason, { exit: m, level: to === 'succeeded' ? 'audit' : 'warn' });
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
        void ctx.execute(a, vmId);
        continue;
      }
      if (!k) {
        // Sent but unknown: the agent restarted and lost it (it may even have
        // run); sending it again could run it twice. Not sent yet: startOn sends it.
        if (a.execSent)
          ctx.transition(a.id, 'lost', 'the agent restarted and no longer knows the job', {
            level: 'warn',
          });
        continue;
      }
      // Known: ask for everything after what we stored (duplicates are ignored).
      a.out ??= ctx.openOutput(a.id, vmId);
      if (a.phase !== 'running') ctx.markRunning(a);
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
    await ctx.agents
      .call(a.vmId, 'signal', { jobId: a.id, signal: 'SIGTERM' }, options.execTimeoutMs)
      .catch((err: unknown) =>
        ctx.log.warn({ jobId: a.id, err: errText(err) }, 'cancel not delivered (yet)'),
      );
  }

  function onAgentGone(vmId: string): void {
    for (const a of active.values()) {
      if (a.vmId === vmId && a.phase !== 'waiting')
        ctx.armGrace(
          a,
          `the agent disconnected and did not come back within ${options.agentGraceMs} ms`,
        );
    }
  }

  /** A VM stopped or failed: its jobs are lost (or failed, if it never became ready). */
  function onVmState(vm: VmRecord, from: VmState): void {
    if (vm.state === 'ready' || isInactiveVm(vm.state)) ctx.pump();
    // Suspended: the jobs stay in the saved guest and go on if it resumes
    // within the agent grace of a reconnect (its agent's hello lists them).
    if (!isDownVm(vm.state) || vm.state === 'suspended') return;
    for (const a of [...active.values()]) {
      if (a.vmId !== vm.id || a.phase === 'waiting') continue;
      if (a.phase === 'placing' && from === 'starting') continue; // the boot's waiter reports it
      if (a.cancelRequested) {
        ctx.transition(a.id, 'cancelled', `cancelled; its VM is ${vm.state}`);
        continue;
      }
      const st = repo.get(a.id)?.state;
      const why = `its VM ${vm.name} is ${vm.state}${vm.stateReason ? ` (${vm.stateReason})` : ''}`;
      if (st === 'queued' && !a.ownsVm) ctx.transition(a.id, 'failed', why, { level: 'warn' });
      else ctx.transition(a.id, 'lost', why, { level: 'warn' });
    }
  }

  const offAgents = ctx.agents.listen({
    output: onOutput,
    exit: onExit,
    hello: onHello,
    gone: onAgentGone,
  });
  ctx.pools.onVmAvailable(() => ctx.pump());
  const offState = ctx.vms.onStateChange(onVmState);

  return {
    onHello,
    sendCancel,
    off() {
      offAgents();
      offState();
    },
  };
}
