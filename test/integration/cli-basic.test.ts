/**
 * The built `mvirt` against the real mvirtd as shipped (bin/mvirtd.js),
 * without booting a VM (test/integration/mvirt-run.test.ts and the daemon's
 * own integration tests boot VMs). Controllers reach it on its unix socket
 * only (no TCP port to collide with). VM definitions need a built image: the
 * one `npm test` builds into test-output/data/images (built here when missing).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { imagesDir } from '../../harness/build.js';
import { spawnDaemon, stopProcess, type DaemonProcess } from '../../harness/daemon.js';
import { makeTempDir, removeDir, REPO } from '../../harness/paths.js';
import { mvirt as run } from '../support/cli.js';

describe('mvirt against mvirtd', { timeout: 600_000 }, () => {
  let d: DaemonProcess;
  let dataDir: string;
  let socket: string;
  const hostId = 'test-host';
  /** `mvirt ARGS` pointed at the daemon, or with only `env` when given. */
  const mvirt = (args: string[], env?: Record<string, string>) =>
    env ? run(args, { env }) : run(args, { daemon: d });
  before(async () => {
    const images = await imagesDir({ dataDir: path.join(REPO, 'test-output/data') });
    dataDir = await makeTempDir('mvirt-cli-it-');
    d = await spawnDaemon(
      ['--data-dir', dataDir, '--images-dir', images, '--listen', 'off', '--http', 'off'],
      { bundle: 'dist' },
    );
    socket = d.socket!;
  });
  after(async () => {
    if (d) await stopProcess(d);
    await removeDir(dataDir);
  });

  it('mvirt info --json returns system.info', async () => {
    const r = await mvirt(['info', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const info = JSON.parse(r.stdout) as { hostId: string; backends: unknown[]; cpus: number };
    assert.equal(info.hostId, hostId);
    assert.ok(info.cpus >= 1);
    assert.ok(Array.isArray(info.backends));
  });

  it('mvirt info finds the only host by itself and prints a readable summary', async () => {
    const r = await mvirt(['info', '--broker', socket], {});
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^Host: +${hostId}$`, 'm'));
    const backends = (
      JSON.parse((await mvirt(['info', '--json'])).stdout) as { backends: unknown[] }
    ).backends;
    if (backends.length > 0) assert.match(r.stdout, /^BACKEND +AVAILABLE/m);
  });

  it('vm create, ls, get, rm', async () => {
    const info = JSON.parse((await mvirt(['info', '--json'])).stdout) as {
      images: string[];
      backends: { available: boolean }[];
    };
    assert.ok(info.images.includes('default'), 'the default image is there');
    assert.ok(
      info.backends.some((b) => b.available),
      'a backend is available',
    );
    let r = await mvirt([
      'vm',
      'create',
      'it-web',
      '--vcpus',
      '1',
      '--memory',
      '128',
      '--meta',
      'k=v',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^created it-web \(\S+\): 1 vCPU, 128 MiB, stopped$/m);

    r = await mvirt(['vm', 'create', 'it-web']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /VM_EXISTS/);

    r = await mvirt(['vm', 'ls']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^NAME +ID +STATE/m);
    assert.match(r.stdout, /^it-web +\S+ +stopped +1 +128 MiB +service/m);

    r = await mvirt(['vm', 'ls', '--json', '--state', 'stopped']);
    const list = JSON.parse(r.stdout) as { vms: { name: string; id: string }[] };
    const vm = list.vms.find((v) => v.name === 'it-web');
    assert.ok(vm);

    r = await mvirt(['vm', 'get', vm.id, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { name: string }).name, 'it-web');
    r = await mvirt(['vm', 'get', 'it-web']);
    assert.match(r.stdout, /^Metadata: +k=v$/m);

    r = await mvirt(['events', '--object', 'it-web', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok((JSON.parse(r.stdout) as { events: unknown[] }).events.length >= 1);

    r = await mvirt(['vm', 'rm', 'it-web']);
    assert.equal(r.code, 0, r.stderr);
    r = await mvirt(['vm', 'get', 'it-web']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /VM_NOT_FOUND/);
  });

  it('VM snapshots on the QEMU backend, without booting: none yet, a stopped VM refused', async () => {
    let r = await mvirt(['snapshot', 'ls', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { snapshots: [] });
    r = await mvirt(['vm', 'create', 'it-cold']);
    assert.equal(r.code, 0, r.stderr);
    // QEMU can save state: the refusal is the VM's state, not the backend's.
    for (const args of [
      ['vm', 'snapshot', 'it-cold', 's1'],
      ['vm', 'suspend', 'it-cold', '--dry-run'],
    ]) {
      r = await mvirt(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(
        r.stderr,
        /VM it-cold is stopped; cannot (snapshot|suspend) it \[VM_BAD_STATE\]/,
      );
      assert.match(r.stderr, /^hint: .*start it first \(`mvirt vm start it-cold`\)$/m);
    }
    r = await mvirt(['vm', 'create', 'it-fork', '--from-snapshot', 'nope', '--count', '2']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no snapshot with id or name nope \[SNAPSHOT_NOT_FOUND\]/);
    assert.equal((await mvirt(['vm', 'get', 'it-fork-1'])).code, 1, 'no fork was made');
    assert.equal((await mvirt(['vm', 'rm', 'it-cold'])).code, 0);
  });

  it('an invalid VM name is a usage error (exit 2), refused before sending', async () => {
    const r = await mvirt(['vm', 'get', 'no/such']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /INVALID_PARAMS/);
  });

  it('exit 3 with advice when nothing listens at the broker address', async () => {
    const r = await mvirt(['info', '--broker', path.join(dataDir, 'nothing.sock')], {});
    assert.equal(r.code, 3);
    assert.match(r.stderr, /cannot connect to .*nothing\.sock.*is mvirtd running/);
  });

  it('exit 3 when the named host does not answer', async () => {
    const r = await mvirt(['info', '--host', 'elsewhere', '--timeout', '1'], {
      MVIRT_BROKER: socket,
    });
    assert.equal(r.code, 3);
    assert.match(r.stderr, /no reply to system\.info from host 'elsewhere'/);
  });
});
