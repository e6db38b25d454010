/**
 * The volume manager wired to real parts for unit tests: files in a real
 * folder, a real SQLite store, qemu-img, the event log, the one transition
 * function. Published messages are kept for tests that look at them.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { qmpDiskSnapshotPlan } from '../../host/hypervisors/qemu/disk-snapshot.js';
import { createEventLog } from '../../host/events/log.js';
import type { MvirtLogger } from '../../host/log.js';
import type { Store } from '../../host/store/index.js';
import { createVolumeAttach } from '../../host/volumes/attach.js';
import { createVolumeFiles } from '../../host/volumes/files.js';
import { createVolumeManager, type VolumeManager } from '../../host/volumes/manager.js';
import { createQemuImg } from '../../host/volumes/qemu-img.js';
import type { VolumeVms } from '../../host/volumes/snapshots.js';
import { createVolumeTransitions } from '../../host/volumes/transition.js';
import { MvirtError, type ErrorCode } from '../../protocol/errors.js';
import { topics } from '../../protocol/topics.js';

export interface VolumeRig {
  volumes: VolumeManager;
  attach: ReturnType<typeof createVolumeAttach>;
}

export function volumeRig(o: {
  store: Store;
  volDir: string;
  log: MvirtLogger;
  published?: { topic: string; payload: string }[];
  vmActive?: (vmId: string) => boolean;
  vms?: VolumeVms;
  maxBytes?: number | null;
  importDir?: string | null;
}): VolumeRig {
  const { store, log } = o;
  const files = createVolumeFiles(o.volDir);
  const bus = {
    publish: (topic: string, payload: Buffer | string) => {
      o.published?.push({ topic, payload: payload.toString() });
      return Promise.resolve();
    },
    subscribe: () => Promise.resolve(() => Promise.resolve()),
  };
  const t = topics('mvirt/h');
  const events = createEventLog({
    repo: store.events,
    bus,
    topics: t,
    log,
    retention: { days: 30, maxRows: 10_000 },
  });
  const transitions = createVolumeTransitions({ store, events, bus, topics: t, log });
  const attach = createVolumeAttach({ store, files, transitions });
  const volumes = createVolumeManager({
    store,
    files,
    qemuImg: createQemuImg(),
    transitions,
    vmActive: o.vmActive ?? (() => false),
    ...(o.vms ? { vms: o.vms } : {}),
    log,
    options: { maxBytes: o.maxBytes ?? null, importDir: o.importDir ?? null },
  });
  return { volumes, attach };
}

/** A stopped service VM row, for volumes to be attached to. */
export function addStoreVm(store: Store, id: string): void {
  store.vms.insert({
    id,
    name: id,
    vcpus: 1,
    memoryMiB: 256,
    kind: 'service',
    image: 'default',
    backend: 'qemu',
    network: { mode: 'none' },
    metadata: {},
  });
}

/** `p` fails with an MvirtError of this code; returns it. */
export async function refused(
  p: Promise<unknown> | (() => unknown),
  code: ErrorCode,
): Promise<MvirtError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    assert.ok(err instanceof MvirtError, `an MvirtError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}`);
}

/**
 * The VMs' side of the volume manager, faked: `running` VMs have the volume
 * open, live snapshots are recorded in `liveCalls` and written with qemu-img
 * (the same internal snapshot QEMU's QMP command writes; test/integration has
 * QEMU), their plans are the QEMU backend's own, and lock requests are kept
 * in `locked`.
 */
export function fakeVolumeVms(o: {
  /** The volumes folder (a getter: tests make it in before()). */
  volDir: () => string;
  running: ReadonlySet<string>;
  liveCalls: string[];
  locked?: string[][];
}): VolumeVms {
  const qemuImg = createQemuImg();
  return {
    withVmLocks: (ids, fn) => {
      o.locked?.push([...ids]);
      return fn();
    },
    hasProcess: (id) => o.running.has(id),
    async diskSnapshot(id, action, file, name) {
      o.liveCalls.push(`${id} ${action} ${file} ${name}`);
      await qemuImg.snapshot(path.join(o.volDir(), file), action, name);
    },
    planDiskSnapshot: (_id, action, file, name) => qmpDiskSnapshotPlan(action, file, name),
  };
}
