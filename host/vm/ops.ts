/**
 * The VM manager's public lifecycle operations (vm.create, start, stop, kill,
 * pause, resume, reboot, delete; destroy for the VMs of jobs and pools). Each
 * runs under the VM's lock (kill excepted) and checks the backend's
 * capabilities before it asks the backend.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { MvirtError } from '../../protocol/errors.js';
import type { VmRecord } from '../../protocol/rpc.js';
import type { CreateVmParams, VmContext } from './context.js';
import { admitCreate, capable, pausedLive, requireDown, upLive } from './admit.js';
import { clearTimers, exitsWithin } from './live.js';
import { unlinkDisks } from './disks.js';
import { canTransition } from './states.js';
import { SUSPEND_DIR } from './save.js';
import path from 'node:path';
import { DOWN_VM_STATES, isActiveVm, UP_VM_STATES } from '../../protocol/states.js';

export function vmOperations(ctx: VmContext) {
  const { vms, options, network, topics, events } = ctx;

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

  /** SIGKILL the VM's process if it has one and wait for its exit; a VM marked up without one is recorded stopped. */
  async function killNow(id: string): Promise<VmRecord> {
    const live = ctx.liveOf(id);
    const cur = ctx.find(id); // deleted meanwhile: VM_NOT_FOUND
    if (!live) {
      if (isActiveVm(cur.state)) {
        if (cur.state !== 'stopping') ctx.transition(id, 'stopping', 'kill requested');
        return ctx.transition(id, 'stopped', 'killed (no hypervisor process was running)');
      }
      return cur;
    }
    if (cur.state !== 'stopping' && canTransition(cur.state, 'stopping')) {
      ctx.transition(id, 'stopping', 'kill requested');
    }
    live.exitIntent = { to: 'stopped', reason: 'killed' };
    ctx.audit(`${cur.name}: kill`, [id]);
    live.running!.signal('SIGKILL');
    if (!(await exitsWithin(live.running!, options.killTimeoutMs))) {
      throw new MvirtError('HYPERVISOR_ERROR', `VM ${cur.name} did not exit after SIGKILL`);
    }
    return vms.get(id)!;
  }

  /** Remove a VM that is down (VM_RUNNING otherwise): its folder, its row, its retained state. Under its lock. */
  async function deleteNow(id: string): Promise<Record<string, never>> {
    const cur = ctx.find(id); // deleted meanwhile: VM_NOT_FOUND
    requireDown(cur);
    const live = ctx.lives.get(id);
    if (live?.running) {
      // A failed VM whose process is still exiting.
      live.running.signal('SIGKILL');
      await exitsWithin(live.running, options.killTimeoutMs);
    }
    if (ctx.volumes) unlinkDisks(ctx.volumes, ctx.dirOf(id), ctx.log);
    await rm(ctx.dirOf(id), { recursive: true, force: true });
    const disks = ctx.store.volumes.disksOf(id);
    // The disk rows go with the VM's (a foreign key cascade); its volumes follow.
    ctx.store.db.transaction(() => {
      vms.delete(id);
      ctx.volumes?.attach.released(id, cur.name, disks);
    })();
    ctx.lastFailure.delete(id);
    ctx.publish(topics.vmState(id), '', true); // clears the retained state
    ctx.audit(`${cur.name}: deleted`, [id, `image:${cur.image}`]);
    events.publishVmEvent(id, { at: ctx.now(), type: 'deleted' });
    return {};
  }

  const ops = {
    async create(p: CreateVmParams): Promise<VmRecord> {
      const { vcpus, memoryMiB, backend, image, net, disks } = await admitCreate(ctx, p);
      const id = `vm-${randomBytes(6).toString('hex')}`;
      try {
        // One transaction: a VM whose address cannot be allocated is not created.
        ctx.store.db.transaction(() => {
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
          if (disks.length > 0) ctx.volumes!.attach.attach(id, p.name, disks);
        })();
      } catch (err) {
        if (disks.length > 0) ctx.volumes!.attach.republish(disks);
        if (err instanceof MvirtError) throw err;
        if (String(err).includes('UNIQUE')) {
          throw new MvirtError('VM_EXISTS', `a VM named ${p.name} already exists`);
        }
        throw err;
      }
      const rec = vms.get(id)!;
      ctx.publishState(rec);
      ctx.audit(`${p.name}: created`, [id, `image:${image}`, ...disks.map((d) => d.volume)], {
        name: p.name,
        image,
        vcpus,
        memoryMiB,
        backend,
        network: net,
        ...(rec.ip ? { ip: rec.ip, mac: rec.mac } : {}),
        ...(disks.length > 0 ? { disks } : {}),
      });
      events.publishVmEvent(id, { at: rec.createdAt, type: 'created' });
      return rec;
    },

    async start(ref: string, wait = false): Promise<VmRecord> {
      const { id } = ctx.find(ref);
      if (ctx.closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
      const rec = await ctx.withLock(id, () => ctx.boot(id));
      if (!wait) return rec;
      return ctx.waitForState(id, UP_VM_STATES, DOWN_VM_STATES);
    },

    async stop(ref: string, timeoutMs = options.stopTimeoutMs): Promise<VmRecord> {
      const { id } = ctx.find(ref);
      return ctx.withLock(id, async () => {
        const cur = vms.get(id);
        if (!cur) throw new MvirtError('VM_NOT_FOUND', `VM ${ref} was deleted`);
        const live = ctx.liveOf(id);
        if (!live && cur.state === 'suspended') {
          // Stopping a suspended VM drops its saved state: its next start boots.
          vms.setPendingRestore(id, null, ctx.now());
          await rm(path.join(ctx.dirOf(id), SUSPEND_DIR), { recursive: true, force: true });
          return ctx.transition(id, 'stopped', 'stop requested: saved state dropped');
        }
        if (!live) {
          if (isActiveVm(cur.state)) {
            // State says up but no process is known: record the truth.
            if (cur.state !== 'stopping') ctx.transition(id, 'stopping', 'stop requested');
            return ctx.transition(id, 'stopped', 'no hypervisor process was running');
          }
          return cur;
        }
        if (cur.state !== 'stopping') {
          if (!canTransition(cur.state, 'stopping')) return cur;
          ctx.transition(id, 'stopping', 'stop requested');
        }
        ctx.audit(`${cur.name}: stop`, [id], { timeoutMs });
        await ctx.stopProcess(live, live.running!, timeoutMs);
        return vms.get(id)!;
      });
    },

    async kill(ref: string): Promise<VmRecord> {
      const { id } = ctx.find(ref);
      // A boot in progress holds the lock until its process exists.
      if (!ctx.liveOf(id) && ctx.locks.has(id)) await ctx.withLock(id, () => Promise.resolve());
      return killNow(id);
    },

    async pause(ref: string): Promise<VmRecord> {
      const { id } = ctx.find(ref);
      return ctx.withLock(id, async () => {
        const cur = ctx.find(id); // deleted meanwhile: VM_NOT_FOUND
        capable(ctx, cur, 'pause');
        const live = upLive(ctx, cur, 'pause');
        await hvCall(cur.name, 'pause', () => live.running!.pause());
        live.pausedFrom = cur.state;
        return ctx.transition(id, 'paused', 'pause requested');
      });
    },

    async resume(ref: string): Promise<VmRecord> {
      const { id } = ctx.find(ref);
      return ctx.withLock(id, async () => {
        const cur = ctx.find(id); // deleted meanwhile: VM_NOT_FOUND
        capable(ctx, cur, 'pause');
        const live = pausedLive(ctx, cur);
        await hvCall(cur.name, 'resume', () => live.running!.resume());
        const to = live.pausedFrom ?? (live.agentExpected ? 'ready' : 'running');
        live.pausedFrom = undefined;
        return ctx.transition(id, to, 'resume requested');
      });
    },

    async reboot(ref: string): Promise<VmRecord> {
      const { id } = ctx.find(ref);
      return ctx.withLock(id, async () => {
        const cur = ctx.find(id); // deleted meanwhile: VM_NOT_FOUND
        capable(ctx, cur, 'reboot');
        const live = upLive(ctx, cur, 'reboot');
        const rec = ctx.transition(id, 'starting', 'reboot requested');
        ctx.agents.forgetHello(id);
        live.launchedAt = performance.now();
        ctx.armBootTimer(live);
        try {
          await hvCall(cur.name, 'reboot', () => live.running!.reboot());
        } catch (err) {
          ctx.failBoot(live, 'HYPERVISOR_ERROR', `reboot failed: ${String(err)}`);
          throw err;
        }
        // The new guest's agent starts a fresh MQTT session: give it a fresh host end.
        if (live.agentExpected) {
          ctx.agents.renew(id);
        } else {
          clearTimers(live);
          return ctx.transition(id, 'running', 'rebooted (the image has no agent)');
        }
        return rec;
      });
    },

    async delete(ref: string): Promise<Record<string, never>> {
      const { id } = ctx.find(ref);
      return ctx.withLock(id, () => deleteNow(id));
    },

    /**
     * Kill and delete, whatever state the VM is in (the VMs of jobs and pools:
     * nothing in them is worth a graceful stop). The first kill does not wait
     * for an operation under way (a stop) but does for a boot; the second, under
     * the lock with the delete, catches a start that slipped in between.
     */
    async destroy(ref: string): Promise<Record<string, never>> {
      const { id } = ctx.find(ref);
      await ops.kill(id);
      return ctx.withLock(id, async () => {
        await killNow(id);
        return deleteNow(id);
      });
    },
  };
  return ops;
}
