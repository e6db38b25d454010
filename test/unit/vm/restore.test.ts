/**
 * What a start resumes from instead of booting, decided before anything is
 * launched (findSavedState, on a real store and real snapshot folders): a
 * suspended VM's own state folder, a fork's snapshot, or nothing; and what is
 * refused (a file missing or of the wrong size, a snapshot gone or of a
 * rebuilt image). The identity a restored guest reads (identityFor). The
 * files' sha256 are checked by checkHashes (test/unit/snapshots/files.test.ts).
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../../host/log.js';
import type { BootNetwork } from '../../../host/network/index.js';
import {
  createSnapshotFiles,
  newSnapshotId,
  type SnapshotFiles,
} from '../../../host/snapshots/files.js';
import { createStore, type Store } from '../../../host/store/index.js';
import type { VmContext } from '../../../host/vm/context.js';
import type { ResolvedImage } from '../../../host/vm/images.js';
import { findSavedState, identityFor } from '../../../host/vm/restore.js';
import { SUSPEND_DIR } from '../../../host/vm/save.js';
import { CMDLINE_KEYS, IDENTITY_BYTES, Identity } from '../../../protocol/agent.js';
import type { VmRecord } from '../../../protocol/rpc.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { addStoreVm, refused } from '../../support/volumes.js';

const NOW = '2026-01-01T00:00:00.000Z';
const STATE_BYTES = 4096;
const RAM_BYTES = 8192;
/** A state saved with RAM as a file: state.bin and ram.bin. */
const saved = {
  backend: 'qemu',
  version: '9.2.0',
  machine: 'pc-i440fx-9.2',
  memoryMiB: 256,
  vcpus: 1,
  devices: 'd'.repeat(64),
  ram: 'file' as const,
  files: { 'state.bin': STATE_BYTES, 'ram.bin': RAM_BYTES },
  bytes: STATE_BYTES + RAM_BYTES,
};
/** The sha256 of each file as recorded (findSavedState hands them on; it does not hash). */
const hashes = { 'state.bin': 'e'.repeat(64), 'ram.bin': 'f'.repeat(64) };
/** Writes the state's files into `dir`, each of its recorded size unless `sizes` says otherwise. */
async function writeState(dir: string, sizes: Partial<Record<string, number>> = {}): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, bytes] of Object.entries(saved.files))
    await writeFile(path.join(dir, name), Buffer.alloc(sizes[name] ?? bytes, 1));
}
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
  await writeState(await files.prepare(id));
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
    files: {
      'state.bin': { bytes: STATE_BYTES, sha256: hashes['state.bin'] },
      'ram.bin': { bytes: RAM_BYTES, sha256: hashes['ram.bin'] },
    },
  });
  store.snapshots.markReady(id, saved, JSON.stringify(hashes));
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

  test('a suspended VM resumes from its own state folder, one generation on', async () => {
    const vm = await vmIn('suspended');
    store.vms.setRestored(
      vm.id,
      2,
      { snapshot: 'suspend', generation: 2, spawnToRunningMs: 1 },
      NOW,
    );
    store.vms.setPendingRestore(vm.id, { from: 'suspend', saved, hashes }, NOW);
    const dir = path.join(ctx.dirOf(vm.id), SUSPEND_DIR);
    await writeState(dir);
    assert.deepEqual(await findSavedState(ctx, vm, image()), {
      from: 'suspend',
      dir,
      saved,
      hashes,
      generation: 3,
    });
    // The image is not compared for a suspend: the VM resumes as it was.
    assert.equal((await findSavedState(ctx, vm, image('other', 'k9')))?.from, 'suspend');
    // A state saved through the stream has state.bin alone.
    const stream = { ...saved, ram: 'stream' as const, files: { 'state.bin': STATE_BYTES } };
    const streamHashes = { 'state.bin': hashes['state.bin'] };
    store.vms.setPendingRestore(
      vm.id,
      { from: 'suspend', saved: stream, hashes: streamHashes },
      NOW,
    );
    await rm(path.join(dir, 'ram.bin'));
    assert.deepEqual(await findSavedState(ctx, vm, image()), {
      from: 'suspend',
      dir,
      saved: stream,
      hashes: streamHashes,
      generation: 3,
    });
  });

  test('a suspended VM whose state files are missing or of another size: SNAPSHOT_INVALID, kept', async () => {
    const vm = await vmIn('suspended');
    const pending = { from: 'suspend' as const, saved, hashes };
    store.vms.setPendingRestore(vm.id, pending, NOW);
    const dir = path.join(ctx.dirOf(vm.id), SUSPEND_DIR);
    const why = (what: string) =>
      `the suspended state of VM ${vm.name}: ${what}; delete the VM, or vm.stop it and start it afresh`;
    // No folder at all.
    let e = await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
    assert.equal(e.message, why(`state.bin has no file, ${STATE_BYTES} expected`));
    // state.bin short, ram.bin right.
    await writeState(dir, { 'state.bin': STATE_BYTES - 1 });
    e = await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
    assert.equal(e.message, why(`state.bin has ${STATE_BYTES - 1} bytes, ${STATE_BYTES} expected`));
    // state.bin right, ram.bin missing, short, long or empty.
    await writeState(dir);
    await rm(path.join(dir, 'ram.bin'));
    e = await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
    assert.equal(e.message, why(`ram.bin has no file, ${RAM_BYTES} expected`));
    for (const size of [RAM_BYTES - 1, RAM_BYTES + 1, 0]) {
      await writeState(dir, { 'ram.bin': size });
      e = await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
      assert.equal(e.message, why(`ram.bin has ${size} bytes, ${RAM_BYTES} expected`));
    }
    assert.deepEqual(store.vms.restoreState(vm.id)!.pending, pending, 'still pending');
    assert.deepEqual(
      readdirSync(dir).sort(),
      ['ram.bin', 'state.bin'],
      'the files are left for the operator',
    );
  });

  test('the leftover of a suspend that did not finish is dropped: a cold boot', async () => {
    const vm = await vmIn('stopped');
    store.vms.setPendingRestore(vm.id, { from: 'suspend', saved, hashes }, NOW);
    const dir = path.join(ctx.dirOf(vm.id), SUSPEND_DIR);
    await writeState(dir);
    assert.equal(await findSavedState(ctx, vm, image()), null);
    assert.equal(store.vms.restoreState(vm.id)!.pending, null);
    assert.ok(!existsSync(dir), 'the whole folder goes');
    // Without a folder left, the same.
    store.vms.setPendingRestore(vm.id, { from: 'suspend', saved, hashes }, NOW);
    assert.equal(await findSavedState(ctx, vm, image()), null);
    assert.equal(store.vms.restoreState(vm.id)!.pending, null);
  });

  test("a fork resumes from its snapshot's files, past the source's generation", async () => {
    const snap = await snapshot(4);
    const vm = await fork(snap);
    assert.deepEqual(await findSavedState(ctx, vm, image()), {
      from: snap,
      dir: files.dirOf(snap),
      saved,
      hashes,
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
    for (const [name, damage] of [
      ['state.bin', (f: string) => writeFile(f, 'short')],
      ['state.bin', (f: string) => rm(f)],
      ['ram.bin', (f: string) => writeFile(f, Buffer.alloc(RAM_BYTES + 1))],
      ['ram.bin', (f: string) => rm(f)],
    ] as const) {
      const snap = await snapshot();
      const vm = await fork(snap);
      await damage(path.join(files.dirOf(snap), name));
      const e = await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
      assert.match(
        e.message,
        new RegExp(`^snapshot ${snap}: ${name.replace('.', '\\.')} (has|is missing)`),
      );
    }
    const snap = await snapshot();
    const vm = await fork(snap);
    await files.remove(snap);
    await refused(findSavedState(ctx, vm, image()), 'SNAPSHOT_INVALID');
  });
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
