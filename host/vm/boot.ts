/**
 * Boot as named steps with rollback (steps.ts runs them), and the one
 * admission check that guards it: capacity and the backend's capabilities are
 * checked before anything is launched.
 */
import { mkdir, rm } from 'node:fs/promises';
import type { Logger } from 'pino';
import { requireCapability, requireChannel } from '../hypervisors/index.js';
import type { DiskSpec, LaunchSpec } from '../hypervisors/types.js';
import { linkDisks, linkedSpec, unlinkDisks } from './disks.js';
import type { PlanBuilder } from '../plan.js';
import type { MvirtLogger } from '../log.js';
import type { BootNetwork } from '../network/index.js';
import { CMDLINE_KEYS } from '../../protocol/agent.js';
import { MvirtError, type ErrorCode } from '../../protocol/errors.js';
import type { RestoreInfo, VmRecord } from '../../protocol/rpc.js';
import { findSavedState, identityFor, type RestoreSource } from './restore.js';
import { checkHashes } from '../snapshots/files.js';
import { writeStateSpec } from './save.js';
import type { Reserved, Size, VmContext } from './context.js';
import type { ResolvedImage } from './images.js';
import { clearTimers, exitsWithin, newLive, type Live } from './live.js';
import { isActiveVm } from '../../protocol/states.js';
import { planSteps, runSteps, StepError, type Step } from './steps.js';
import { yieldingPart, type YieldingMode } from './yielding.js';

/** The hypervisor interface takes a plain pino Logger; ours has the extra `audit` level. */
export const plain = (l: MvirtLogger): Logger => l as unknown as Logger;

interface BootCtx {
  vm: VmRecord;
  image?: ResolvedImage;
  live?: Live;
  net?: BootNetwork;
  /** The VM's volumes for this boot, linked into its folder. */
  disks?: DiskSpec[];
  /** Resume from this saved state instead of booting (restore.ts); null: a cold boot. */
  restore?: RestoreSource | null;
}

const NOTHING_RESERVED: Reserved = { vms: 0, vcpus: 0, memoryMiB: 0 };

export function bootPart(
  ctx: VmContext,
): Pick<VmContext, 'admissionProblem' | 'boot' | 'planBoot'> {
  const { vms, options, network, hypervisors, lives } = ctx;
  const yielding = yieldingPart(ctx);

  /**
   * The one admission check: why one more VM of this size would not fit now,
   * or null. `reserved`: VMs a caller is still creating (not `starting` yet,
   * so not in allocated()).
   */
  function admissionProblem(
    vm: Size,
    reserved: Reserved = NOTHING_RESERVED,
    mode: YieldingMode = 'free',
  ): MvirtError | null {
    return problemWith(vm, reserved, yielding.freeIn(mode));
  }

  /** admissionProblem, with the room of the VMs in `free` (yielding ones) counted as free. */
  function problemWith(vm: Size, reserved: Reserved, free: string[]): MvirtError | null {
    const held = vms.allocated();
    const gone = yielding.heldBy(free);
    const a = {
      vms: held.vms + reserved.vms - gone.vms,
      vcpus: held.vcpus + reserved.vcpus - gone.vcpus,
      memoryMiB: held.memoryMiB + reserved.memoryMiB - gone.memoryMiB,
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

  const BOOT_STEPS: Step<BootCtx>[] = [
    {
      name: 'resolve image',
      run: async (c) => {
        c.image = await ctx.images.resolve(c.vm.image);
      },
      plan: async (c, b) => {
        c.image = await ctx.images.resolve(c.vm.image);
        b.admit(`image ${c.vm.image} found`);
      },
    },
    {
      name: 'check backend',
      plan: async (c, b) => {
        await checkBackend(c);
        b.admit(`backend ${c.vm.backend} is available and can boot this image`);
      },
      run: (c) => checkBackend(c),
    },
    {
      name: 'find saved state',
      run: async (c) => {
        c.restore = await findSavedState(ctx, c.vm, c.image!);
      },
      plan: async (c, b) => {
        c.restore = await findSavedState(ctx, c.vm, c.image!);
        if (c.restore)
          b.admit(
            `resumes from ${c.restore.from === 'suspend' ? 'its suspended state' : `snapshot ${c.restore.from}`} (${c.restore.saved.bytes} bytes, ${c.restore.saved.version}, ${c.restore.saved.machine}) instead of booting`,
          );
      },
    },
    {
      // Check and reserve in one synchronous block: the `starting` row is the
      // reservation the next admission check sees.
      name: 'admission',
      run: async (c) => {
        // Room that yielding VMs (idle spares) hold is made first; then the
        // check counts them as held, and reserves, in one synchronous block.
        await yielding.makeRoom(c.vm, (free) => problemWith(c.vm, NOTHING_RESERVED, free));
        admit(c, 'held');
        c.vm = ctx.transition(c.vm.id, 'starting', 'start requested');
        lives.set(c.vm.id, c.live!);
        ctx.lastFailure.delete(c.vm.id);
      },
      undo: (c) => {
        if (lives.get(c.vm.id) === c.live) lives.delete(c.vm.id);
      },
      plan: (c, b) => {
        admit(c);
        const y = ctx.yielding;
        if (y && !y.ids().includes(c.vm.id) && problemWith(c.vm, NOTHING_RESERVED, []) !== null)
          b.step("destroy idle spare VMs (mvirtd's own, resumed ahead for jobs) until it fits");
        const l = options.limits;
        const held = vms.allocated();
        b.admit(
          `capacity: ${held.vms + 1} of ${l.maxVms} VMs, ${held.vcpus + c.vm.vcpus} of ${l.vcpus} vCPUs, ${held.memoryMiB + c.vm.memoryMiB} of ${l.memoryMiB} MiB`,
        );
        b.change(`vm ${c.vm.name}: ${c.vm.state} → starting`);
      },
    },
    {
      name: 'prepare dir',
      run: async (c) => {
        await mkdir(c.live!.dir, { recursive: true, mode: 0o700 });
      },
      plan: (c, b) => void b.create(`${c.live!.dir}/`),
    },
    {
      // After the image root disk and before the seed: the guest sees them in
      // this order, each also under /dev/disk/by-id/virtio-<volume id>.
      name: 'link volumes',
      run: async (c) => {
        c.disks = ctx.volumes ? await linkDisks(ctx.volumes, c.vm.id, c.live!.dir) : [];
      },
      undo: (c) => {
        if (ctx.volumes) unlinkDisks(ctx.volumes, c.live!.dir, c.live!.log);
      },
      plan: async (c, b) => {
        const disks = ctx.volumes ? await ctx.volumes.attach.bootDisks(c.vm.id) : [];
        c.disks = disks.map((d) => linkedSpec(c.live!.dir, d));
        for (const d of c.disks) b.create(...(d.backing ?? []).map((x) => x.path), d.path);
      },
    },
    {
      // TAP on the bridge (or user mode's passt), the per-boot token, the seed disk.
      name: 'prepare network',
      run: async (c) => {
        c.net = await network.prepare(c.vm, c.live!.dir);
      },
      undo: (c) => network.release(c.vm.id),
      plan: async (c, b) => {
        const p = await network.plan(c.vm, c.live!.dir);
        c.net = p.boot;
        for (const argv of p.commands) b.exec(argv);
        b.create(...p.files);
      },
    },
    {
      name: 'launch hypervisor',
      run: async (c) => {
        const live = c.live!;
        live.launchedAt = performance.now();
        const spec = launchSpec(c);
        const r = c.restore;
        if (r) {
          const check = checkHashes(r.dir, r.hashes, `VM ${c.vm.name}`);
          check.catch(() => undefined); // awaited by the backend; unobserved if launch fails first
          // A fork wakes with its source's MAC and address: no link until it has its own.
          const linkDown = r.from !== 'suspend' && spec.network.mode === 'bridge';
          spec.restore = { dir: r.dir, state: r.saved, check, linkDown };
        }
        const running = await live.hv.launch(spec, plain(live.log));
        live.running = running;
        await writeStateSpec(live.dir, spec);
        if (r) resumed(c, r, performance.now() - live.launchedAt, spec.restore?.linkDown === true);
        ctx.openAgent(live, c.vm.network.agentOverNetwork === true);
        ctx.watchExit(live, running);
        ctx.armBootTimer(live);
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
      plan: async (c, b) => {
        const plans = c.live!.hv.plans;
        if (!plans) return;
        const p = await plans.launch(launchSpec(c));
        b.exec(p.argv).create(...p.files);
      },
    },
    {
      name: 'persist runtime',
      run: (c) => {
        vms.putRuntime(c.vm.id, c.live!.running!.runtime, ctx.now());
        network.persist(c.vm.id);
        const rec = vms.get(c.vm.id);
        if (rec) ctx.publishState(rec); // now with pid and accel
      },
      undo: (c) => vms.deleteRuntime(c.vm.id),
      plan: (c, b) => void b.change(`vm ${c.vm.name}: runtime recorded (pid, sockets)`),
    },
    { name: 'attach console', run: (c) => ctx.attachConsole(c.live!) },
    {
      name: 'connect agent channel',
      run: async (c) => {
        if (c.live!.agentExpected) await ctx.agents.connect(c.vm.id);
      },
    },
  ];

  /** Resumed from saved state: record it; the agent's first hello finishes it (restore.ts). */
  function resumed(c: BootCtx, r: RestoreSource, ms: number, linkDown: boolean): void {
    const info: RestoreInfo = {
      snapshot: r.from === 'suspend' ? 'suspend' : r.from,
      generation: r.generation,
      spawnToRunningMs: Math.round(ms),
    };
    c.live!.restoring = { info, linkDown };
    vms.setRestored(c.vm.id, r.generation, info, ctx.now());
    c.live!.log.info(info, 'resumed from saved state');
    // Loaded into the new process: a suspended VM's state has served.
    if (r.from === 'suspend') void rm(r.dir, { recursive: true, force: true });
  }

  /** The hypervisor's launch spec for this boot (launched, or planned). */
  function launchSpec(c: BootCtx): LaunchSpec {
    const live = c.live!;
    const img = c.image!;
    const net = c.net!;
    return {
      vmId: c.vm.id,
      vcpus: c.vm.vcpus,
      memoryMiB: c.vm.memoryMiB,
      kernel: img.kernel,
      initrd: img.initrd,
      cmdline: img.cmdline,
      // The image's root disk first: the µOS looks for its squashfs on the first disks;
      // an imported image's own disk next (rcS takes the next squashfs one).
      disks: [
        ...(img.disk ? [{ path: img.disk, readOnly: true }] : []),
        ...(img.imageDisk ? [{ path: img.imageDisk, readOnly: true }] : []),
        ...(c.disks ?? []),
        ...net.disks,
      ],
      dir: live.dir,
      channel: net.channel ?? live.hv.capabilities.channels[0] ?? 'virtio-serial',
      // The backend adds mvirt.vm and mvirt.channel itself.
      agentArgs: {
        [CMDLINE_KEYS.root]: ctx.topics.root,
        ...(options.telemetryMs !== undefined
          ? { [CMDLINE_KEYS.telemetryMs]: String(options.telemetryMs) }
          : {}),
        ...net.cmdline,
      },
      network: net.nic,
      consoleLogBytes: options.consoleLogBytes,
      identity: identityFor(c.vm, net, c.restore?.generation ?? 0),
    };
  }

  function admit(c: BootCtx, mode: YieldingMode = 'free'): void {
    if (ctx.closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
    const problem = admissionProblem(c.vm, NOTHING_RESERVED, mode);
    if (problem) throw problem;
  }

  async function checkBackend(c: BootCtx): Promise<void> {
    const hv = hypervisors.get(c.vm.backend);
    const probe = await hypervisors.probe(c.vm.backend);
    if (!hv || !probe.available) {
      throw new MvirtError(
        'BACKEND_UNAVAILABLE',
        `backend ${c.vm.backend} is not available on this host${probe.reason ? `: ${probe.reason}` : ''}`,
      );
    }
    // µOS images are a kernel and an initrd.
    requireCapability(hv, 'directKernelBoot');
    // Its agent's channel (the network's, or the backend's first).
    const channel =
      c.vm.network.agentOverNetwork === true
        ? 'tcp'
        : (hv.capabilities.channels[0] ?? 'virtio-serial');
    if (c.image!.agent) requireChannel(hv, channel);
    c.image = await ctx.images.forBackend(c.image!, hv.capabilities.kernelFormats);
    c.live = newLive({
      id: c.vm.id,
      hv,
      dir: ctx.dirOf(c.vm.id),
      log: ctx.log.child({ vmId: c.vm.id, vm: c.vm.name }),
      agentExpected: c.image!.agent,
    });
  }

  /** The VM, and whether it needs booting (start of one up or booting is a no-op). */
  function bootable(id: string): { vm: VmRecord; boot: boolean } {
    const vm = vms.get(id);
    if (!vm) throw new MvirtError('VM_NOT_FOUND', `no VM with id ${id}`);
    if (vm.state === 'stopping') {
      throw new MvirtError('VM_BAD_STATE', `VM ${vm.name} is stopping; start it once stopped`);
    }
    return { vm, boot: !isActiveVm(vm.state) };
  }

  /** vm.start's dry run: the same precondition, then each boot step's plan. */
  async function planBoot(id: string, b: PlanBuilder): Promise<void> {
    const { vm, boot } = bootable(id);
    if (!boot) {
      b.admit(`VM ${vm.name} is ${vm.state} already: nothing to do`);
      return;
    }
    const c: BootCtx = { vm };
    await planSteps(BOOT_STEPS, c, b);
    b.change(
      c.live!.agentExpected
        ? `vm ${vm.name}: starting → ready once its agent says so`
        : `vm ${vm.name}: starting → running (the image has no agent)`,
    );
  }

  async function boot(id: string): Promise<VmRecord> {
    const { vm, boot } = bootable(id);
    if (!boot) return vm; // already up or booting: start is idempotent
    const c: BootCtx = { vm };
    let failed: { step: string; reason: string } | undefined;
    // A suspended VM whose resume fails stays suspended, its state kept for another try.
    const down = vm.state === 'suspended' ? 'suspended' : 'failed';
    try {
      await runSteps(BOOT_STEPS, c, ctx.log.child({ vmId: id }), (step, err) => {
        const reason = `boot step '${step}' failed: ${err instanceof Error ? err.message : String(err)}`;
        failed = { step, reason };
        // Rollback kills the process; its exit must not be read as a crash.
        if (c.live) c.live.exitIntent = { to: down, reason };
      });
    } catch (err) {
      const inner = err instanceof StepError ? err.error : err;
      const code: ErrorCode = inner instanceof MvirtError ? inner.code : 'BOOT_FAILED';
      const reason = failed?.reason ?? String(inner);
      if (c.live) {
        c.live.failure = { code, reason };
        clearTimers(c.live);
        if (lives.get(id) === c.live) lives.delete(id);
      }
      ctx.lastFailure.set(id, { code, reason });
      if (vms.get(id)?.state === 'starting') ctx.transition(id, down, reason, 'error');
      if (inner instanceof MvirtError) throw inner;
      throw new MvirtError('BOOT_FAILED', reason, { cause: inner });
    }
    const live = c.live!;
    if (!live.agentExpected) {
      clearTimers(live);
      return ctx.transition(id, 'running', 'the image has no agent');
    }
    return vms.get(id)!;
  }

  return { admissionProblem, boot, planBoot };
}
