/**
 * Placement of jobs onto VMs (a service VM, an ephemeral VM booted for the
 * job, or a pool VM), the FIFO queue while the host is at capacity, the exec
 * that starts a job, and its live output with backpressure on the agent.
 */
import { MvirtError } from '../../protocol/errors.js';
import type { VmRecord } from '../../protocol/rpc.js';
import { errText, META_JOB, type Active, type JobContext } from './context.js';
import { createOutputLog, type OutputLog } from './output.js';
import { AGENT_VM_STATES, DOWN_VM_STATES } from '../../protocol/states.js';

type PlacementPart = Pick<
  JobContext,
  'pump' | 'startOn' | 'execute' | 'markRunning' | 'armGrace' | 'openOutput'
>;

export function placementPart(ctx: JobContext): PlacementPart & {
  creatingEphemeral(): { vms: number; vcpus: number; memoryMiB: number };
} {
  const { repo, vms, pools, active, options } = ctx;

  /**
   * Ephemeral VMs being created for jobs that are not `starting` yet: their
   * resources are not in vms.allocated(), but they will be.
   */
  function creatingEphemeral(): { vms: number; vcpus: number; memoryMiB: number } {
    const r = { vms: 0, vcpus: 0, memoryMiB: 0 };
    for (const o of active.values()) {
      if (o.phase !== 'placing' || o.target.kind !== 'image') continue;
      if (o.vmId !== null && ctx.safeGet(o.vmId)?.state !== 'stopped') continue;
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
    if (ctx.closing) return;
    if (pumping) {
      pumpAgain = true;
      return;
    }
    pumping = true;
    const queued = ctx.waiting().length;
    try {
      do {
        pumpAgain = false;
        let capacityBlocked = false;
        const reserved = creatingEphemeral();
        for (const a of ctx.waiting()) {
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
    if (ctx.waiting().length < queued) ctx.republishQueue();
    pools.reconcileAll();
  }

  async function bootEphemeral(
    a: Active,
    image: string,
    size: { vcpus: number; memoryMiB: number },
  ): Promise<void> {
    let vm: VmRecord | undefined;
    let template: 'used' | 'wanted' | 'none' = 'none';
    try {
      const v = {
        name: `job-${a.id.slice(4, 16)}`,
        image,
        vcpus: size.vcpus,
        memoryMiB: size.memoryMiB,
        metadata: { [META_JOB]: a.id },
      };
      // A spare of this kind, resumed ahead and ready: the job runs at once.
      const spare = ctx.spares?.take(v);
      if (spare) {
        a.vmId = spare;
        a.ownsVm = true;
        repo.setVm(a.id, spare, ctx.now());
        await ctx.spares!.warmed(spare);
        if (a.cancelRequested || !active.has(a.id))
          return ctx.destroyVm(spare, 'its job ended before it started');
        return startOn(a, spare, true);
      }
      // A fork of the template of this kind of VM, or a boot (that becomes the template).
      ({ vm, template } = ctx.templates
        ? await ctx.templates.create(v)
        : { vm: await vms.create({ ...v, kind: 'ephemeral' }), template: 'none' as const });
      a.vmId = vm.id;
      a.ownsVm = true;
      repo.setVm(a.id, vm.id, ctx.now());
      if (a.cancelRequested) return ctx.destroyVm(vm.id, 'its job was cancelled while booting');
      await vms.start(vm.id, true);
      if (!active.has(a.id)) return ctx.destroyVm(vm.id, 'its job ended while booting');
      // Fresh and ready, nothing run yet: the moment to keep it as the template.
      if (template === 'wanted') await ctx.templates!.adopt(vms.get(vm.id));
      void execute(a, vm.id);
      ctx.spares?.jobVmReady(v);
    } catch (err) {
      if (err instanceof MvirtError && err.code === 'CAPACITY_EXCEEDED' && active.has(a.id)) {
        // Someone took the room between the check and the boot: wait again.
        a.phase = 'waiting';
        a.vmId = null;
        a.ownsVm = false;
        repo.setVm(a.id, null, ctx.now());
        if (vm) ctx.destroyVm(vm.id, 'capacity taken meanwhile');
        return;
      }
      if (vm && template === 'used') await ctx.templates!.failed(vm);
      if (vm) ctx.destroyVm(vm.id, 'its boot failed');
      if (active.has(a.id))
        ctx.transition(a.id, 'failed', `the job's VM could not be booted: ${errText(err)}`, {
          level: 'error',
        });
    }
  }

  /** Put a waiting job onto a VM that is (or will be) ready. */
  function startOn(a: Active, vmId: string, owns: boolean): void {
    a.phase = 'placing';
    a.vmId = vmId;
    a.ownsVm = owns;
    repo.setVm(a.id, vmId, ctx.now());
    void (async () => {
      try {
        await vms.waitForState(vmId, AGENT_VM_STATES, DOWN_VM_STATES);
      } catch (err) {
        if (active.has(a.id))
          ctx.transition(a.id, 'failed', `its VM did not become ready: ${errText(err)}`, {
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
    if (fromSeq === undefined) ctx.agents.setBusy(vmId, true);
    a.execSent = true;
    try {
      await ctx.agents.call(
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
          ...(spec.stdinOpen ? { stdinOpen: true } : {}),
          ...(spec.timeoutMs !== undefined ? { timeoutMs: spec.timeoutMs } : {}),
          ...(spec.limits ? { limits: spec.limits } : {}),
          ...(spec.tty ? { tty: spec.tty } : {}),
          ...(fromSeq !== undefined ? { fromSeq } : {}),
        },
        options.execTimeoutMs,
      );
    } catch (err) {
      if (!active.has(a.id)) return;
      if (fromSeq !== undefined) {
        ctx.log.warn({ jobId: a.id, vmId, err: errText(err) }, 'output replay request failed');
        return;
      }
      if (err instanceof MvirtError && err.code === 'AGENT_ERROR') {
        // The command could not be started (no such file, bad cwd, …).
        if (repo.get(a.id)?.state === 'queued') ctx.transition(a.id, 'running', 'exec sent');
        ctx.transition(a.id, 'failed', `the command could not be started: ${err.message}`, {
          level: 'warn',
        });
        return;
      }
      if (err instanceof MvirtError && err.code === 'AGENT_UNAVAILABLE') {
        // Nothing went out: the VM is up but its agent has not (re)connected
        // yet, e.g. right after a daemon restart. Its next hello sends it.
        a.execSent = false;
        a.awaitingAgent = true;
        ctx.log.info({ jobId: a.id, vmId }, 'waiting for the agent to connect before exec');
        armGrace(a, `the agent did not connect: ${errText(err)}`);
        return;
      }
      // Not delivered or not answered: the hello after the agent's reconnect
      // tells whether it runs; the grace timer ends it otherwise.
      ctx.log.warn({ jobId: a.id, vmId, err: errText(err) }, 'exec not acknowledged');
      armGrace(a, `the agent did not acknowledge the job: ${errText(err)}`);
      return;
    }
    markRunning(a);
  }

  function markRunning(a: Active): void {
    a.phase = 'running';
    if (a.graceTimer) clearTimeout(a.graceTimer);
    a.graceTimer = undefined;
    if (repo.get(a.id)?.state === 'queued') ctx.transition(a.id, 'running', null);
  }

  function armGrace(a: Active, reason: string): void {
    if (a.graceTimer) return;
    a.graceTimer = setTimeout(() => {
      a.graceTimer = undefined;
      if (active.has(a.id)) ctx.transition(a.id, 'lost', reason, { level: 'warn' });
    }, options.agentGraceMs);
  }

  function openOutput(id: string, vmId: string): OutputLog {
    const { inFlight } = ctx;
    return createOutputLog({
      jobId: id,
      repo,
      bytes: repo.get(id)?.encoding === 'bytes',
      options: options.output,
      publish: (chunk, bytes) => {
        // The live copy goes to controllers; while too much of it is still on
        // the way, stop reading this VM's agent channel.
        const n = (inFlight.get(vmId) ?? 0) + bytes;
        inFlight.set(vmId, n);
        if (n >= options.outputHighBytes) ctx.agents.hold(vmId, true);
        ctx.bus
          .publish(ctx.topics.jobOutput(id), JSON.stringify(chunk), { qos: 0 })
          .catch((err: unknown) => ctx.log.debug({ err, jobId: id }, 'output publish failed'))
          .finally(() => {
            const left = (inFlight.get(vmId) ?? bytes) - bytes;
            if (left <= 0) inFlight.delete(vmId);
            else inFlight.set(vmId, left);
            if (left <= options.outputLowBytes) ctx.agents.hold(vmId, false);
          });
      },
      onError: (err) => ctx.log.error({ err, jobId: id }, 'cannot store job output'),
    });
  }

  return { creatingEphemeral, pump, startOn, execute, markRunning, armGrace, openOutput };
}
