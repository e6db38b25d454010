/**
 * After the VM manager's recovery: pick up the jobs of the previous daemon
 * (running ones wait for their agent's hello, placed ones are sent again,
 * the rest queue again) and destroy job VMs whose job is over.
 */
import { META_JOB, type Active, type JobContext } from './context.js';
import { isAgentLiveVm } from '../../protocol/states.js';

export function recoverJobs(ctx: JobContext): void {
  const { repo, vms, pools, active } = ctx;
  for (const rec of [...repo.inState('running'), ...repo.inState('queued')]) {
    const vm = rec.vm ? ctx.safeGet(rec.vm) : undefined;
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
    const alive = vm !== undefined && isAgentLiveVm(vm.state);
    if (rec.state === 'running') {
      if (!alive) {
        ctx.transition(a.id, 'lost', 'its VM did not survive the daemon restart', {
          level: 'warn',
        });
        continue;
      }
      a.out = ctx.openOutput(a.id, vm.id);
      if (rec.target.kind === 'pool') pools.restoreClaim(rec.target.pool, vm.id, a.id);
      ctx.armGrace(a, 'its agent did not come back after the daemon restart');
      // The agent's hello (it reconnects to the new daemon) resumes the
      // output; if it came before this point, act on it now.
      const hello = ctx.agents.hello(vm.id);
      if (hello) ctx.onHello(vm.id, hello);
      continue;
    }
    if (alive && rec.vm) {
      // Placed before the restart: the exec may or may not have arrived; the
      // agent deduplicates, so it is sent again once the VM is ready.
      if (rec.target.kind === 'pool') pools.restoreClaim(rec.target.pool, rec.vm, a.id);
      ctx.startOn(a, rec.vm, owns);
      continue;
    }
    if (vm && owns) ctx.destroyVm(vm.id, 'its boot was interrupted by a daemon restart');
    a.vmId = null;
    a.ownsVm = false;
    repo.setVm(a.id, null, ctx.now());
  }
  // Job VMs whose job is over (the daemon died before destroying them).
  for (const vm of vms.tagged(META_JOB)) {
    if (vm.kind === 'ephemeral' && !active.has(vm.metadata[META_JOB]!))
      ctx.destroyVm(vm.id, 'left over from a finished job');
  }
  // Spares no job took before the restart: made afresh when jobs come.
  ctx.spares?.recover(new Set([...active.values()].flatMap((a) => (a.vmId ? [a.vmId] : []))));
  ctx.log.info({ jobs: active.size }, 'job recovery done');
  ctx.republishQueue();
  ctx.pump();
}
