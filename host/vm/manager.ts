/**
 * The VM manager: lifecycle operations, the one `transition()` every state
 * change goes through, boot as named steps with rollback, process-exit
 * handling and recovery after a restart. Its parts share one context
 * (context.ts); this file binds them and is the manager's public face.
 *
 * | file | owns |
 * | --- | --- |
 * | context.ts | dependencies, in-memory state, helpers (locks, publish, find) |
 * | transition.ts | the one transition, state waiters, boot failure and timer |
 * | boot.ts | admission (capacity, backend capabilities) and the boot steps |
 * | agent-events.ts | the VM's agent session and console; hello, ready, busy |
 * | exit.ts | what a hypervisor process's exit means, and its clean-up |
 * | stop.ts | graceful stop, then SIGTERM, then SIGKILL |
 * | recovery.ts | re-adoption or disposal of leftovers through their backend |
 * | ops.ts | create, start, stop, kill, pause, resume, reboot, delete |
 * | admit.ts | the checks an operation and its dry run share |
 * | plan.ts | dry runs of the vm.* methods |
 * | inspect.ts | questions to a guest's agent (vm.blockDevices) |
 * | hotplug.ts | attachDisk, detachDisk (recorded, or hot-plugged as steps) |
 * | disk-access.ts | VM locks and live disk snapshots for the volume manager |
 *
 * Everything is event-driven: readiness comes from the agent's `ready`, death
 * from `RunningVm.exited`, timeouts are timers racing those events.
 */
import type { VmRecord, VmState } from '../../protocol/rpc.js';
import { agentPart } from './agent-events.js';
import { bootPart } from './boot.js';
import {
  createVmContext,
  type Reserved,
  type Size,
  type VmContext,
  type VmManagerDeps,
} from './context.js';
import { exitPart } from './exit.js';
import { diskOperations } from './hotplug.js';
import { vmDiskAccess } from './disk-access.js';
import { clearTimers } from './live.js';
import { vmOperations } from './ops.js';
import { savable, savePart } from './save.js';
import type { DiskToSave } from './save-disks.js';
import { forkPart } from './forks.js';
import { inspectPart } from './inspect.js';
import { vmPlans } from './plan.js';
import { recoveryPart } from './recovery.js';
import { stopPart } from './stop.js';
import { transitionPart } from './transition.js';
import type { YieldingMode, YieldingVms } from './yielding.js';

export type { CreateVmParams, VmManagerDeps, VmManagerOptions } from './context.js';

export const DEFAULT_TIMEOUTS = {
  bootTimeoutMs: 120_000,
  stopTimeoutMs: 30_000,
  termTimeoutMs: 5_000,
  killTimeoutMs: 10_000,
  agentCallTimeoutMs: 5_000,
} as const;

export type VmManager = ReturnType<typeof createVmManager>;

export function createVmManager(deps: VmManagerDeps) {
  const ctx: VmContext = createVmContext(deps);
  Object.assign(
    ctx,
    transitionPart(ctx),
    exitPart(ctx),
    agentPart(ctx),
    bootPart(ctx),
    stopPart(ctx),
    recoveryPart(ctx),
  );
  const { vms, lives, log } = ctx;
  const ops = vmOperations(ctx);
  const save = savePart(ctx);
  const forks = forkPart(ctx, ops);
  const diskOps = diskOperations(ctx);
  let unsubscribeConsole: (() => Promise<void>) | undefined;

  return {
    ...ops,
    ...diskOps,
    ...forks,
    suspend: save.suspend,
    saveForSnapshot: save.saveForSnapshot,
    /** Whether VMs of this backend can be saved and restored (template snapshots). */
    canSave: (backend: string): boolean =>
      deps.hypervisors.get(backend)?.capabilities.snapshots === true &&
      deps.hypervisors.get(backend)?.capabilities.forks === true,
    /**
     * vm.snapshot's checks (VM_BAD_STATE, CAPABILITY_UNSUPPORTED), without
     * saving; with the VM's disks as a snapshot would keep them.
     */
    async checkSavable(ref: string): Promise<{ vm: VmRecord; disks: DiskToSave[] }> {
      const vm = ctx.find(ref);
      return { vm, disks: (await savable(ctx, vm, 'snapshot')).disks };
    },
    ...inspectPart(ctx),
    disks: vmDiskAccess(ctx),
    /** Dry runs of the vm.* methods (plan.ts). */
    plan: vmPlans(ctx),
    waitForState: ctx.waitForState,

    get: (ref: string): VmRecord => ctx.find(ref),
    /** The id of the VM with this id or name, if any. */
    resolveId: (ref: string): string | undefined => vms.find(ref)?.id,
    list: (state?: VmState): VmRecord[] => vms.list(state),
    /** VMs tagged with a metadata key (and value): the VMs of a pool or of jobs. */
    tagged: (key: string, value?: string): VmRecord[] => vms.tagged(key, value),

    /** Resources held by VMs that are not stopped or failed. */
    allocated: () => vms.allocated(),
    /**
     * Would a VM of this size pass admission control now (see
     * admissionProblem)? By default the room of yielding VMs counts as free
     * (its boot makes it); `yielding: 'held'`: fits without displacing any.
     */
    canAdmit: (size: Size, reserved?: Reserved, o: { yielding?: YieldingMode } = {}): boolean =>
      ctx.admissionProblem(size, reserved, o.yielding) === null,
    /** Who the yielding VMs are (host/jobs/spares.ts): they give way to any other VM's boot. */
    setYielding(y: YieldingVms | null): void {
      ctx.yielding = y;
    },
    defaults: deps.options.defaults,
    /** IMAGE_NOT_FOUND unless the image exists (for job.run and pool.set, like vm.create). */
    async checkImage(name: string): Promise<void> {
      await deps.images.resolve(name);
    },
    countByState: () => vms.countByState(),
    onStateChange(fn: (rec: VmRecord, from: VmState) => void): () => void {
      ctx.states.on('state', fn);
      return () => ctx.states.off('state', fn);
    },

    /** Listen to console input; then re-attach surviving VMs. The agent sessions must be started. */
    async startup(): Promise<void> {
      unsubscribeConsole = await deps.broker.subscribe(
        deps.topics.vmConsoleInWildcard,
        (topic, payload) => {
          const id = topic.split('/').at(-3);
          const live = id ? lives.get(id) : undefined;
          live?.console?.write(payload);
        },
      );
      await ctx.recover();
    },

    /** Daemon shutdown: leave VMs running (default) or stop them all. */
    async shutdown(stopVms: boolean): Promise<void> {
      ctx.closing = true;
      const all = [...lives.values()];
      if (stopVms) {
        log.info({ vms: all.length }, 'stopping all VMs (--stop-vms-on-exit)');
        await Promise.allSettled(all.map((l) => ops.stop(l.id)));
      } else {
        for (const live of all) {
          live.detached = true;
          clearTimers(live);
          deps.agents.end(live.id);
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
      await unsubscribeConsole?.().catch(() => undefined);
    },
  };
}
