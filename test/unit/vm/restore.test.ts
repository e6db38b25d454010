/**
 * What a start resumes from instead of booting, decided before anything is
 * launched (findSavedState, on a real store and real snapshot folders): a
 * suspended VM's own state file, a fork's snapshot, or nothing; and what is
 * refused (a file of the wrong size, a snapshot gone or of a rebuilt image).
 * The identity a restored guest reads (identityFor) and the sha256 check.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../../host/log.js';
import type { BootNetwork } from '../../../host/network/index.js';
import {
  createSnapshotFiles,
  newSnapshotId,
  STATE_FILE,
  type SnapshotFiles,
} from '../../../host/snapshots/files.js';
import { createStore, type Store } from '../../../host/store/index.js';
import type { VmContext } from '../../../host/vm/context.js';
import type { ResolvedImage } from '../../../host/vm/images.js';
import { checkSha256, findSavedState, identityFor } from '../../../host/vm/restore.js';
import { SUSPEND_FILE } from '../../../host/vm/save.js';
import { CMDLINE_KEYS, IDENTITY_BYTES, Identity } from '../../../protocol/agent.js';
import type { VmRecord } from '../../../protocol/rpc.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { addStoreVm, refused } from '../../support/volumes.js';

const NOW = '2026-01-01T00:00:00.000Z';
const BYTES = 4096;
const saved = {
  backend: 'qemu',
  version: '9.2.0',
  machine: 'pc-i440fx-9.2',
  memoryMiB: 256,
  vcpus: 1,
  devices: 'd'.repeat(64),
  bytes: BYTES,
};
const image = (name = 'default', key = 'key-1') =>
  ({ name, manifest: { key } }) as unknown as ResolvedImage;

let dir: string;
let store: Store;
let files: SnapshotFiles;
let ctx: VmContext;
before(async () => {
  dir = await makeTempDir('mvirt-restore-');
  store = createStore(path.join(dir, 'mvirt.db'), silentLogger());
  files = createSnapshotFiles(path.join(dir, 'snapshots'));
  ctx = {
    store,
    vms: store.vms,
    snapshotFiles: files,
    dirOf: (id: string) => path.join(dir, 'vm', id),
    now: () => NOW,
  } as unknown as VmContext;
});
after(async () => {
  store.close();
  await removeDir(dir);
});

let n = 0;
/** A VM row (its folder made) in `state`. */
async function vmIn(state: VmRecord['state'] = 'stopped'): Promise<VmRecord> {
  const id = `vm-${(++n).toString(16).padStart(12, '0')}`;
  addStoreVm(store, id);
  if (state !== 'stopped') store.db.prepare('UPDATE vms SET state = ? WHERE id = ?').run(state, id);
  await mkdir(ctx.dirOf(id), { recursive: true });
  return store.vms.get(id)!;
}

/** A ready snapshot with its files, taken of a source at `generation`. */
async function snapshot(generation = 0, key = 'key-1'): Promise<string> {
  const id = newSnapshotId();
  store.snapshots.insert(
    {
      id,
      name: `s-${id}`,
      sourceVm: 'vm-src',
      sourceName: 'src',
      image: 'default',
      imageKey: key,
      backend: 'qemu',
      vcpus: 1,
      memoryMiB: 256,
      network: { mode: 'none' },
      generation,
      createdBy: null,
    },
    NOW,
  );
  await files.prepare(id);
  await writeFile(files.stateFile(id), Buffer.alloc(BYTES, 1));
  await files.writeManifest({
    format: 1,
    id,
    name: `s-${id}`,
    createdAt: NOW,
    createdBy: null,
    source: { vm: 'vm-src', name: 'src', generation },
    image: { name: 'default', key },
    network: { mode: 'none' },
    state: saved,
    files: { [STATE_FILE]: { bytes: BYTES, sha256: 'f'.repeat(64) } },
  });
  store.snapshots.markReady(id, saved, 'f'.repeat(64));
  return id;
}
const fork = async (snap: string, generation = 0): Promise<VmRecord> => {
  const vm = await vmIn();
  store.vms.markFork(vm.id, snap, NOW);
  if (generation > 0) {
    store.vms.setRestored(
      vm.id,
      generation,
      { snapshot: snap, generation, spawnToRunningMs: 1 },
      NOW,
    );
    store.vms.markFork(vm.id, snap, NOW);
  }
  return store.vms.get(vm.id)!;
};

describe('findSavedState', () => {
  test('nothing pending (or no such VM): a cold boot', async () => {
    const vm = await vmIn();
    assert.equal(await findSavedState(ctx, vm, image()), null);
    assert.equal(await findSavedState(ctx, { ...vm, id: 'vm-nope' }, image()), null);
  });

  test('a suspended VM resumes from its own state file, one generation on', async () => {
    const vm = await vmIn('suspended');
    store.vms.setRestored(
      vm.id,
      2,
      { snapshot: 'suspend', generation: 2, spawnToRunningMs: 1 },
      NOW,
    );
    store.vms.setPendingRestore(vm.id, { from: 'suspend', saved, sha256: 'e'.repeat(64) }, NOW);
    const file = path.join(ctx.dirOf(vm.id), SUSPEND_FILE);
    await writeFile(file, Buffer.alloc(BYTES));
    assert.deepEqual(await findSavedState(ctx, vm, image()), {
      from: 'suspend',
      file,
      saved,
      sha256: 'e'.repeat(64),
      generation: 3,
    });
    // The image is not compared for a suspend: the VM resumes as it was.
    assert.equal((await findSavedState(ctx, vm, image('other', 'k9')))?.from, 'suspend');
  });

  test('a suspended VM whose state file is missing or of another size: SNAPSHOT_INVALID, kept', async () => {
    const vm = await vmIn('suspended');
    const pending = { from: 'suspend' as const, saved, sha256: 'e'.repeat(64) };
    store.vms.setPendingRestore(vm.id, pending, NOW);
    let e = await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
    assert.match(
      e.message,
      new RegExp(`has no file, ${BYTES} expected; delete the VM or start it afresh after vm.stop`),
    );
    const file = path.join(ctx.dirOf(vm.id), SUSPEND_FILE);
    await writeFile(file, Buffer.alloc(BYTES - 1));
    e = await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
    assert.match(e.message, new RegExp(`has ${BYTES - 1} bytes, ${BYTES} expected`));
    assert.deepEqual(store.vms.restoreState(vm.id)!.pending, pending, 'still pending');
    assert.ok(existsSync(file), 'the file is left for the operator');
  });

  test('the leftover of a suspend that did not finish is dropped: a cold boot', async () => {
    const vm = await vmIn('stopped');
    store.vms.setPendingRestore(vm.id, { from: 'suspend', saved, sha256: 'e'.repeat(64) }, NOW);
    const file = path.join(ctx.dirOf(vm.id), SUSPEND_FILE);
    await writeFile(file, Buffer.alloc(BYTES));
    assert.equal(await findSavedState(ctx, vm, image()), null);
    assert.equal(store.vms.restoreState(vm.id)!.pending, null);
    assert.ok(!existsSync(file));
    // Without a file left, the same.
    store.vms.setPendingRestore(vm.id, { from: 'suspend', saved, sha256: 'e'.repeat(64) }, NOW);
    assert.equal(await findSavedState(ctx, vm, image()), null);
  });

  test("a fork resumes from its snapshot's files, past the source's generation", async () => {
    const snap = await snapshot(4);
    const vm = await fork(snap);
    assert.deepEqual(await findSavedState(ctx, vm, image()), {
      from: snap,
      file: files.stateFile(snap),
      saved,
      sha256: 'f'.repeat(64),
      generation: 5,
    });
  });

  test('… and past its own generation when that is higher', async () => {
    const snap = await snapshot(1);
    const vm = await fork(snap, 7);
    assert.equal((await findSavedState(ctx, vm, image()))?.generation, 8);
  });

  test('a fork whose snapshot is gone or not ready: SNAPSHOT_NOT_FOUND', async () => {
    const vm = await vmIn();
    store.vms.markFork(vm.id, 'snap-00000000dead', NOW);
    const e = await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_NOT_FOUND');
    assert.match(e.message, /made from snapshot snap-00000000dead, which is gone; delete the VM/);
    const snap = await snapshot();
    store.db.prepare(`UPDATE snapshots SET state = 'saving' WHERE id = ?`).run(snap);
    await refused(findSavedState(ctx, await fork(snap), image()), 'SNAPSHOT_NOT_FOUND');
  });

  test('a snapshot of a rebuilt image (or another image): SNAPSHOT_INCOMPATIBLE', async () => {
    const snap = await snapshot(0, 'key-old');
    const vm = await fork(snap);
    const e = await refused(
      findSavedState(ctx, vm, image('default', 'key-new')),
      'SNAPSHOT_INCOMPATIBLE',
    );
    assert.match(
      e.message,
      /taken of image default as built then; image default was rebuilt since/,
    );
    await refused(findSavedState(ctx, vm, image('other', 'key-old')), 'SNAPSHOT_INCOMPATIBLE');
    assert.equal((await findSavedState(ctx, vm, image('default', 'key-old')))?.from, snap);
  });

  test('a snapshot whose files were damaged: SNAPSHOT_INVALID before anything is launched', async () => {
    const snap = await snapshot();
    const vm = await fork(snap);
    await writeFile(files.stateFile(snap), 'short');
    await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
    await files.remove(snap);
    await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
  });
});

test('checkSha256: resolves on a match, SNAPSHOT_INVALID naming both otherwise', async () => {
  const f = path.join(dir, 'state');
  await writeFile(f, 'saved state');
  const sum = createHash('sha256').update('saved state').digest('hex');
  await checkSha256(f, sum, 'snapshot warm');
  const e = await refused(checkSha256(f, '0'.repeat(64), 'snapshot warm'), 'SNAPSHOT_INVALID');
  assert.equal(
    e.message,
    `snapshot warm: the state file's sha256 is ${sum}, the record says ${'0'.repeat(64)}; it was changed or damaged`,
  );
});

describe('identityFor', () => {
  const vm = { id: 'vm-0123456789ab', name: 'web-1' } as VmRecord;
  const decode = (b: Uint8Array) => {
    assert.equal(b.length, IDENTITY_BYTES, 'always the same size');
    const text = new TextDecoder().decode(b);
    assert.match(text, /^\{.*\} *$/s, 'JSON padded with spaces');
    return Identity.parse(JSON.parse(text));
  };
  const net = (o: Partial<BootNetwork>): BootNetwork => ({
    nic: { mode: 'none' },
    disks: [],
    cmdline: {},
    ...o,
  });

  test('no network: who it is, its generation and fresh entropy, no address or token', () => {
    const a = decode(identityFor(vm, net({}), 3));
    assert.deepEqual(Object.keys(a).sort(), ['entropy', 'generation', 'hostname', 'v', 'vmId']);
    assert.equal(a.v, 1);
    assert.equal(a.generation, 3);
    assert.equal(a.vmId, vm.id);
    assert.equal(a.hostname, 'web-1');
    assert.equal(Buffer.from(a.entropy, 'base64').length, 64);
    assert.notEqual(decode(identityFor(vm, net({}), 3)).entropy, a.entropy, 'fresh per call');
  });

  test('bridged: the NIC’s MAC and the address, gateway and DNS of the boot network; the token', () => {
    const id = decode(
      identityFor(
        vm,
        net({
          nic: { mode: 'bridge', tap: 'tap0', mac: '52:54:00:12:34:56' },
          cmdline: {
            [CMDLINE_KEYS.ip]: '10.1.2.3/24',
            [CMDLINE_KEYS.gw]: '10.1.2.1',
            [CMDLINE_KEYS.dns]: '10.1.2.53',
          },
          channel: 'tcp',
          token: 'tok-123',
        }),
        1,
      ),
    );
    assert.deepEqual(id.net, {
      mac: '52:54:00:12:34:56',
      ip: '10.1.2.3/24',
      gw: '10.1.2.1',
      dns: '10.1.2.53',
    });
    assert.equal(id.token, 'tok-123');
    const bare = decode(
      identityFor(
        vm,
        net({
          nic: { mode: 'bridge', tap: 'tap0', mac: '52:54:00:12:34:56' },
          cmdline: { [CMDLINE_KEYS.ip]: '10.1.2.3/24' },
        }),
        1,
      ),
    );
    assert.deepEqual(bare.net, { mac: '52:54:00:12:34:56', ip: '10.1.2.3/24' });
    assert.equal(bare.token, undefined);
  });

  test('no net block without a bridge, a MAC and an address', () => {
    const user = net({
      nic: { mode: 'user', socket: '/run/passt.sock', mac: '52:54:00:12:34:56' },
      cmdline: { [CMDLINE_KEYS.ip]: '10.0.2.15/24', [CMDLINE_KEYS.gw]: '10.0.2.2' },
    });
    assert.equal(decode(identityFor(vm, user, 1)).net, undefined, 'user networking');
    const noMac = net({
      nic: { mode: 'bridge', tap: 't' },
      cmdline: { [CMDLINE_KEYS.ip]: '10.1.2.3/24' },
    });
    assert.equal(decode(identityFor(vm, noMac, 1)).net, undefined);
    const noIp = net({ nic: { mode: 'bridge', tap: 't', mac: '52:54:00:12:34:56' } });
    assert.equal(decode(identityFor(vm, noIp, 1)).net, undefined);
  });
});
