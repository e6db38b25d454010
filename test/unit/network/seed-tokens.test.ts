/** The seed ISO made by the real genisoimage and read back with isoinfo; tokens against a real SQLite store. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { silentLogger } from '../../../host/log.js';
import { SEED_TOKEN_PATH, writeSeed } from '../../../host/network/seed.js';
import { createAgentTokens } from '../../../host/network/tokens.js';
import { createStore, type Store } from '../../../host/store/index.js';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
const temp = async () => {
  const d = await mkdtemp(path.join(os.tmpdir(), 'mvirt-seed-'));
  dirs.push(d);
  return d;
};
/** A bridged VM row (named like its id) for the repositories to hang leases and runtime on. */
const insertBridgedVm = (store: Store, id: string): void =>
  store.vms.insert({
    id,
    name: id,
    vcpus: 1,
    memoryMiB: 128,
    kind: 'service',
    image: 'default',
    backend: 'qemu',
    network: { mode: 'bridge' },
    metadata: {},
  });

const hasTools =
  spawnSync('genisoimage', ['-version']).status === 0 &&
  spawnSync('isoinfo', ['-version']).status !== null;

const isoFile = (iso: string, file: string): string =>
  spawnSync('isoinfo', ['-R', '-i', iso, '-x', `/${file}`], { encoding: 'utf8' }).stdout;

test(
  'seed: a cidata ISO with the documents and the token, nothing left beside it',
  { skip: !hasTools && 'genisoimage not installed' },
  async () => {
    const dir = await temp();
    const iso = await writeSeed(dir, {
      vmId: 'vm-0123456789ab',
      hostname: 'alpha',
      docs: { userData: '#cloud-config\nruncmd: [true]\n', networkConfig: 'version: 2\n' },
      token: 'secret-token',
    });
    const pvd = spawnSync('isoinfo', ['-d', '-i', iso], { encoding: 'utf8' }).stdout;
    assert.match(pvd, /Volume id: cidata/);
    assert.equal(
      isoFile(iso, 'meta-data'),
      'instance-id: vm-0123456789ab\nlocal-hostname: alpha\n',
    );
    assert.equal(isoFile(iso, 'user-data'), '#cloud-config\nruncmd: [true]\n');
    assert.equal(isoFile(iso, 'network-config'), 'version: 2\n');
    assert.equal(isoFile(iso, SEED_TOKEN_PATH), 'secret-token');
    assert.equal(statSync(iso).mode & 0o777, 0o600);
    assert.deepEqual(await readdir(dir), ['seed.iso'], 'the staged token is removed');
  },
);

test('seed: a missing genisoimage says what to install', async () => {
  const dir = await temp();
  await assert.rejects(
    writeSeed(dir, { vmId: 'vm-1', hostname: 'a', docs: {} }, async () => {
      throw Object.assign(new Error('spawn genisoimage ENOENT'), { code: 'ENOENT' });
    }),
    /apt-get install genisoimage/,
  );
});

test('tokens: per boot, per VM, constant shape; persisted hashes survive a restart', async () => {
  const dir = await temp();
  const store = createStore(path.join(dir, 'mvirt.db'), silentLogger());
  try {
    insertBridgedVm(store, 'vm-a');
    store.vms.putRuntime(
      'vm-a',
      { backend: 'qemu', pid: 1, startTime: 1, accel: 'tcg', sockets: {} },
      'now',
    );
    const tokens = createAgentTokens(store.network);
    const first = tokens.issue('vm-a');
    assert.match(first, /^[A-Za-z0-9_-]{43}$/, '256 bits, base64url');
    assert.ok(tokens.verify('vm-a', first));
    assert.ok(!tokens.verify('vm-b', first), 'another VM');
    assert.ok(!tokens.verify('vm-a', `${first}x`));
    tokens.persist('vm-a');
    const second = tokens.issue('vm-a'); // a new boot
    assert.ok(!tokens.verify('vm-a', first), 'the old boot token is dead');
    tokens.persist('vm-a');
    // A restarted daemon: only re-attached VMs get their hash back.
    const restarted = createAgentTokens(store.network);
    restarted.load(new Set());
    assert.ok(!restarted.verify('vm-a', second));
    restarted.load(new Set(['vm-a']));
    assert.ok(restarted.verify('vm-a', second));
    restarted.revoke('vm-a');
    assert.ok(!restarted.verify('vm-a', second));
    assert.ok(
      !JSON.stringify(store.db.prepare('SELECT * FROM vm_runtime').all()).includes(second),
      'only the hash is stored',
    );
  } finally {
    store.close();
  }
});

test('leases: unique per VM and address, released with the VM', async () => {
  const dir = await temp();
  const store = createStore(path.join(dir, 'mvirt.db'), silentLogger());
  try {
    insertBridgedVm(store, 'vm-a');
    insertBridgedVm(store, 'vm-b');
    const l = store.network.allocate('vm-a', '02:00:00:00:00:01', () => '10.0.0.2');
    assert.equal(
      store.network.allocate('vm-a', 'x', () => assert.fail('not asked again')).ip,
      l.ip,
    );
    assert.throws(
      () => store.network.allocate('vm-b', '02:00:00:00:00:02', () => '10.0.0.2'),
      /UNIQUE/,
    );
    const seen: string[][] = [];
    store.network.allocate('vm-b', '02:00:00:00:00:02', (taken) => {
      seen.push([...taken]);
      return '10.0.0.3';
    });
    assert.deepEqual(seen, [['10.0.0.2']]);
    assert.equal(store.vms.get('vm-b')!.ip, '10.0.0.3');
    store.vms.delete('vm-a');
    assert.equal(store.network.lease('vm-a'), undefined, 'released on delete');
  } finally {
    store.close();
  }
});
