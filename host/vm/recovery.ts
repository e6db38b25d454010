/**
 * Recovery after a daemon restart: every runtime row left by the previous
 * daemon is put to its backend, which says whether the process is its own
 * (identify) and then re-adopts it (attach) or ends it (dispose). The VM
 * manager never signals a leftover pid itself. The rest is recorded as it is.
 */
import type { Ownership, RunningVm } from '../hypervisors/types.js';
import type { VmContext } from './context.js';
import { newLive } from './live.js';
import { plain } from './boot.js';
import { ACTIVE_VM_STATES, isActiveVm } from '../../protocol/states.js';

const OWNERSHIP_TEXT: Record<Exclude<Ownership, 'ours'>, string> = {
  gone: 'its hypervisor process is gone',
  'pid-reused': 'its pid now belongs to another process',
  'not-ours': 'its pid is not the hypervisor of this VM',
};

export function recoveryPart(ctx: VmContext): Pick<VmContext, 'recover'> {
  const { vms, hypervisors, lives, options } = ctx;

  /**
   * Re-attach to every VM whose hypervisor process outlived the previous
   * daemon (pid and start time must match; the backend checks), and record
   * the truth for the rest. A process that is ours but is not re-attached
   * is disposed of by its backend: no orphans.
   */
  async function recover(): Promise<void> {
    const runtimes = vms.allRuntime();
    let adopted = 0;
    for (const rt of runtimes) {
      const vm = vms.get(rt.vmId);
      if (!vm) continue; // row cascaded away with its VM
      const dir = ctx.dirOf(vm.id);
      const vlog = ctx.log.child({ vmId: vm.id, vm: vm.name });
      const hv = hypervisors.get(rt.backend);
      let running: RunningVm | undefined;
      let why: string;
      if (!hv) {
        // No backend of this build can tell whether the pid is still its own.
        why = `backend ${rt.backend} is unknown`;
        vlog.warn(
          { pid: rt.pid, backend: rt.backend },
          `no backend named ${rt.backend}: its process (if any) is left alone; start mvirtd with that backend to end it`,
        );
      } else {
        const who = hv.identify(rt, dir);
        why = who === 'ours' ? `the VM is ${vm.state}` : OWNERSHIP_TEXT[who];
        if (who === 'ours' && isActiveVm(vm.state)) {
          try {
            running = await hv.attach(rt, dir, plain(vlog));
            // Launched but never run (a restore's state loading, or -S): the
            // daemon that would have finished the launch is gone.
            if ((await running.status()) === 'starting') {
              why = 'its launch never finished (the guest never ran)';
              await running.detach();
              running = undefined;
            }
          } catch (err) {
            why = err instanceof Error ? err.message : String(err);
          }
        }
        if (!running && who === 'ours') {
          vlog.warn(
            { pid: rt.pid, why },
            'a hypervisor process that is not re-attached; ending it',
          );
          await hv
            .dispose(rt, dir, plain(vlog))
            .catch((err: unknown) => vlog.error({ err, pid: rt.pid }, 'cannot end it'));
        }
      }
      if (!hv || !running) {
        vms.deleteRuntime(vm.id);
        ctx.removeSockets(dir, rt.sockets);
        if (isActiveVm(vm.state)) {
          const to = vm.state === 'stopping' ? 'stopped' : 'failed';
          ctx.transition(vm.id, to, `not re-attached after a daemon restart: ${why}`, 'warn');
        }
        continue;
      }
      let agentExpected = true;
      try {
        agentExpected = (await ctx.images.resolve(vm.image)).agent;
      } catch {
        agentExpected = vm.agentVersion !== undefined || vm.state !== 'running';
      }
      const live = newLive({ id: vm.id, hv, dir, log: vlog, agentExpected });
      live.running = running;
      lives.set(vm.id, live);
      ctx.openAgent(live, vm.network.agentOverNetwork === true);
      ctx.watchExit(live, running);
      if (running.runtime.pid !== rt.pid) vms.putRuntime(vm.id, running.runtime, rt.startedAt);
      adopted++;
      ctx.audit(`${vm.name}: re-attached after a daemon restart`, [vm.id], { pid: rt.pid });
      ctx.publishState(vms.get(vm.id)!);
      if (vm.state === 'starting') ctx.armBootTimer(live);
      void ctx.attachConsole(live);
      if (agentExpected) ctx.agents.connectSoon(vm.id);
      if (vm.state === 'stopping') {
        // The previous daemon was stopping it: finish the job.
        void ctx
          .withLock(vm.id, () => ctx.stopProcess(live, running, options.stopTimeoutMs))
          .catch((err: unknown) => vlog.error({ err }, 'stop after restart failed'));
      }
    }
    // Processes launched but never recorded (the daemon died in between): ended.
    const known = new Set([...lives.values()].map((l) => l.running!.runtime.pid));
    for (const name of hypervisors.names()) {
      await hypervisors
        .get(name)
        ?.disposeOrphans?.(options.vmDir, known, plain(ctx.log))
        .catch((err: unknown) => ctx.log.warn({ err }, 'cannot look for orphan processes'));
    }
    // Tokens of re-attached VMs back in memory; TAPs of everything else removed.
    await ctx.network
      .recovered(new Set(lives.keys()))
      .catch((err: unknown) => ctx.log.warn({ err }, 'network recovery incomplete'));
    // VMs marked up without a runtime row never got a process (or lost it).
    for (const vm of vms.list()) {
      if (!ACTIVE_VM_STATES.includes(vm.state) || lives.has(vm.id)) continue;
      const to = vm.state === 'stopping' ? 'stopped' : 'failed';
      ctx.transition(vm.id, to, 'no hypervisor process after a daemon restart', 'warn');
    }
    // Retained states live in the broker's memory: every VM's, again (the
    // re-attached ones were published above; the rest would be missing).
    for (const vm of vms.list()) if (!lives.has(vm.id)) ctx.publishState(vm);
    ctx.log.info({ adopted, runtimeRows: runtimes.length }, 'recovery done');
  }

  return { recover };
}
