/**
 * Booting by resuming saved state instead (a fork's first start from its
 * snapshot, or a start of a suspended VM), and the guest's side of it: who it
 * is now (the identity the hypervisor hands it), and the first hello of its
 * agent afterwards, when mvirtd sets the guest's clock, adds entropy and
 * records what the agent did (fork hygiene, reported as a `restored` event).
 */
import { randomBytes } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import {
  CLOCK_STEP,
  CMDLINE_KEYS,
  encodeIdentity,
  SyncResult,
  type Hello,
  type Identity,
} from '../../protocol/agent.js';
import { MvirtError } from '../../protocol/errors.js';
import type { RestoreInfo, VmRecord } from '../../protocol/rpc.js';
import type { SavedState } from '../hypervisors/types.js';
import type { BootNetwork } from '../network/index.js';
import type { PendingRestore } from '../store/index.js';
import { savedOf } from '../snapshots/files.js';
import type { VmContext } from './context.js';
import { readGuestClock, type ClockReading } from './clock-probe.js';
import type { ResolvedImage } from './images.js';
import type { Live } from './live.js';
import { SUSPEND_DIR } from './save.js';

type Restoring = NonNullable<Live['restoring']>;

/** What a boot resumes from instead of booting. */
export interface RestoreSource {
  /** `suspend`, or the snapshot id. */
  from: string;
  /** The folder of the state's files. */
  dir: string;
  saved: SavedState;
  /** sha256 of each file, checked while the hypervisor loads them. */
  hashes: Record<string, string>;
  /** The identity generation the guest gets (higher than any it ran with). */
  generation: number;
}

/** Entropy handed to a guest per boot and per sync (mixed into its pool). */
const ENTROPY_BYTES = 64;

/**
 * What the agent's clock step may take beyond an ordinary call (CLOCK_STEP:
 * its rounds, each up to a second and busybox `date`'s latency). Given only
 * the ordinary 5 s, a sync under load (2 forks, load 17–25 on 2 cores,
 * 2026-12-07) ended without a result and its restore was recorded unsynced:
 * snapshots-qemu's fork test failed with "no restore report".
 */
const SYNC_STEP_MS = CLOCK_STEP.rounds * (1000 + CLOCK_STEP.maxLatencyMs);

/**
 * A guest clock still this far off after its step (beyond what the reading
 * can tell) gets one more step. The agent lands its step within
 * CLOCK_STEP.toleranceMs (20 ms) of its target; a miss beyond this is a
 * round that stalled under load.
 */
const RESTEP_MS = 50;

/** What the sync did: the agent's reply, with the clock as mvirtd read it before and after. */
interface Synced extends SyncResult {
  after: ClockReading;
}

/** Who the VM is, as its guest reads it (protocol/agent.ts Identity). */
export function identityFor(vm: VmRecord, net: BootNetwork, generation: number): Uint8Array {
  const ip = net.cmdline[CMDLINE_KEYS.ip];
  const identity: Identity = {
    v: 1,
    generation,
    vmId: vm.id,
    hostname: vm.name,
    entropy: randomBytes(ENTROPY_BYTES).toString('base64'),
    ...(net.token !== undefined ? { token: net.token } : {}),
    ...(net.nic.mode === 'bridge' && net.nic.mac && ip
      ? {
          net: {
            mac: net.nic.mac,
            ip,
            ...(net.cmdline[CMDLINE_KEYS.gw] ? { gw: net.cmdline[CMDLINE_KEYS.gw] } : {}),
            ...(net.cmdline[CMDLINE_KEYS.dns] ? { dns: net.cmdline[CMDLINE_KEYS.dns] } : {}),
          },
        }
      : {}),
  };
  return encodeIdentity(identity);
}

const incompatible = (why: string) => new MvirtError('SNAPSHOT_INCOMPATIBLE', why);

/**
 * The saved state this start of `vm` resumes from, or null for a cold boot:
 * checked (manifest, sizes, image) before anything is launched. The files'
 * sha256 are checked while the hypervisor loads them (restore.check).
 */
export async function findSavedState(
  ctx: VmContext,
  vm: VmRecord,
  image: ResolvedImage,
): Promise<RestoreSource | null> {
  const rs = ctx.vms.restoreState(vm.id);
  const pending: PendingRestore | null = rs?.pending ?? null;
  if (!rs || !pending) return null;
  if (pending.from === 'suspend') {
    const dir = path.join(ctx.dirOf(vm.id), SUSPEND_DIR);
    // Only a suspended VM resumes; a leftover of an interrupted suspend is dropped.
    if (vm.state !== 'suspended') {
      ctx.vms.setPendingRestore(vm.id, null, ctx.now());
      await rm(dir, { recursive: true, force: true });
      return null;
    }
    for (const [name, bytes] of Object.entries(pending.saved.files)) {
      const size = await stat(path.join(dir, name)).then(
        (s) => s.size,
        () => -1,
      );
      if (size !== bytes)
        throw new MvirtError(
          'SNAPSHOT_INVALID',
          `the suspended state of VM ${vm.name}: ${name} has ${size < 0 ? 'no file' : `${size} bytes`}, ${bytes} expected; delete the VM, or vm.stop it and start it afresh`,
        );
    }
    return {
      from: 'suspend',
      dir,
      saved: pending.saved,
      hashes: pending.hashes,
      generation: rs.generation + 1,
    };
  }
  const snap = ctx.store.snapshots.get(pending.snapshot);
  if (!snap || snap.state !== 'ready')
    throw new MvirtError(
      'SNAPSHOT_NOT_FOUND',
      `VM ${vm.name} was made from snapshot ${pending.snapshot}, which is gone; delete the VM`,
    );
  const m = await ctx.snapshotFiles.readManifest(snap.id);
  if (m.image.name !== image.name || m.image.key !== image.manifest.key)
    throw incompatible(
      `snapshot ${snap.name} was taken of image ${m.image.name} as built then; image ${image.name} was rebuilt since`,
    );
  return {
    from: snap.id,
    dir: ctx.snapshotFiles.dirOf(snap.id),
    saved: savedOf(m),
    hashes: Object.fromEntries(Object.entries(m.files).map(([n, f]) => [n, f.sha256])),
    generation: Math.max(m.source.generation, rs.generation) + 1,
  };
}

export function restorePart(ctx: VmContext) {
  /** The first hello after a restore: set the clock, add entropy, record the agent's report. */
  function onHello(live: Live, hello: Hello): void {
    const r = live.restoring;
    if (!r || r.synced) return;
    r.synced = sync(live, r, hello).then(
      (res) => recorded(live, r, hello, res),
      (err: unknown) => {
        live.log.warn({ err }, 'cannot sync the restored guest (clock, entropy)');
        recorded(live, r, hello, null, err instanceof Error ? err.message : String(err));
      },
    );
  }

  /**
   * Clock and entropy; then the fork's link up once its agent says it took
   * its own address. The clock is read (pings), stepped by what was read,
   * and read again: a step that missed is stepped once more, and what is
   * left is recorded.
   */
  async function sync(live: Live, r: Restoring, hello: Hello): Promise<Synced> {
    const read = () =>
      readGuestClock({
        ping: () => ctx.agents.call(live.id, 'ping', {}, ctx.options.agentCallTimeoutMs),
        wallMs: () => Date.now(),
        monoMs: () => performance.now(),
      });
    const step = async (stepMs: number) =>
      SyncResult.parse(
        await ctx.agents.call(
          live.id,
          'sync',
          { stepMs, entropy: randomBytes(ENTROPY_BYTES) },
          ctx.options.agentCallTimeoutMs + SYNC_STEP_MS,
        ),
      );
    const before = await read();
    const res = await step(before.offsetMs);
    let { entropyBytes } = res;
    let after = await read();
    if (Math.abs(after.offsetMs) > RESTEP_MS + after.boundMs) {
      live.log.warn({ before, after }, 'the restored guest clock missed its step; stepping again');
      entropyBytes += (await step(after.offsetMs)).entropyBytes;
      after = await read();
    }
    const network = res.network ?? hello.restored?.network;
    if (r.linkDown && (network === 'applied' || network === 'none')) {
      await live.running?.setLink?.(true);
      r.linkDown = false;
    }
    return { ...res, clockStepMs: before.offsetMs, entropyBytes, after };
  }

  /** What the restore did, kept on the VM and said as a `restored` event (a failed sync too). */
  function recorded(
    live: Live,
    r: Restoring,
    hello: Hello,
    res: Synced | null,
    syncError?: string,
  ): void {
    const rep = hello.restored;
    const network = res?.network ?? rep?.network;
    // r.info is the one object ready and sync both complete (in either order).
    Object.assign(r.info, {
      ...(res
        ? {
            clockStepMs: res.clockStepMs,
            clockErrorMs: -res.after.offsetMs,
            clockErrorBoundMs: res.after.boundMs,
          }
        : {}),
      entropyBytes: (res?.entropyBytes ?? 0) + (rep?.entropyBytes ?? 0),
      ...(network !== undefined ? { network } : {}),
      ...(rep
        ? {
            jobsDropped: rep.jobsDropped,
            ...(rep.previous.vmId !== live.id ? { previousVm: rep.previous.vmId } : {}),
          }
        : {}),
    } satisfies Partial<RestoreInfo>);
    const info = r.info;
    ctx.vms.setRestoreInfo(live.id, info, ctx.now());
    const vm = ctx.vms.get(live.id);
    if (!vm) return;
    ctx.publishState(vm);
    const linkDown = r.linkDown ? '; its link stays down: it did not take its own address' : '';
    const what = res
      ? `clock stepped ${Math.round(res.clockStepMs)} ms, now ${Math.round(info.clockErrorMs!)} ± ${Math.ceil(info.clockErrorBoundMs!)} ms off the host's, ${info.entropyBytes} bytes of entropy`
      : `the guest's clock and entropy were not synced: ${syncError}`;
    ctx.events.append({
      level: res && !r.linkDown ? 'info' : 'warn',
      component: 'vm',
      message: `${vm.name}: restored (${what}${info.previousVm ? `, was ${info.previousVm}` : ''}${linkDown})`,
      objects: [live.id, ...(info.snapshot !== 'suspend' ? [info.snapshot] : [])],
      data: info,
    });
    ctx.events.publishVmEvent(live.id, { at: ctx.now(), type: 'restored' });
  }

  return { onRestoredHello: onHello };
}
