/**
 * `mvirt vm snapshot|suspend`, `mvirt snapshot ls|get|rm` and `mvirt vm
 * create --from-snapshot` in-process against the real mvirtd, its VMs fake
 * processes running the real agent core (harness/fake-vms.ts) on a backend
 * that says it can save state: the fake writes a small state file, and a
 * resume is a new boot of the guest, so the daemon's own snapshot, suspend
 * and restore paths (records, files, checks, the agent's sync) run for real.
 */
import { describe, it } from 'node:test';
import { snapshotCliFixture } from '../../support/cli-snapshots.js';
import assert from 'node:assert/strict';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { result } from '../../../harness/client.js';
import { FAKE_STATE_BYTES } from '../../../harness/fake-vms.js';

describe('mvirt snapshots, suspend and forks against mvirtd', () => {
  const f = snapshotCliFixture();
  const mvirt = f.mvirt;
  const idOf = async (vm: string): Promise<string> => result(await f.j.c.call('vm.get', { vm })).id;

  it('help lists every snapshot command and the fork options', async () => {
    const main = await mvirt(['--help']);
    for (const c of ['vm snapshot', 'vm suspend', 'snapshot ls', 'snapshot get', 'snapshot rm'])
      assert.match(main.out, new RegExp(`^ {2}${c} +\\S`, 'm'), c);
    const group = await mvirt(['snapshot']);
    assert.equal(group.code, 2, 'a group alone is a usage error');
    assert.match(group.err, /^ {2}snapshot ls +List VM snapshots/m);
    const create = await mvirt(['vm', 'create', '--help']);
    assert.equal(create.code, 0);
    assert.match(create.out, /--from-snapshot SNAPSHOT +resume from this VM snapshot/);
    assert.match(
      create.out,
      /--count N +with --from-snapshot: make N VMs \(1–64\), named NAME-1 … NAME-N/,
    );
    assert.match(create.out, /--wait +with --from-snapshot: return once every VM is ready/);
  });

  it('snapshot ls with none: a hint, and --json an empty list', async () => {
    let r = await mvirt(['snapshot', 'ls']);
    assert.equal(r.code, 0, r.err);
    assert.equal(
      r.out,
      'no VM snapshots yet: take one of a running VM with `mvirt vm snapshot VM NAME`\n',
    );
    r = await mvirt(['snapshot', 'ls', '--json']);
    assert.deepEqual(JSON.parse(r.out), { snapshots: [] });
    r = await mvirt(['snapshot', 'ls', '--vm', 'nobody']);
    assert.equal(r.out, 'no snapshots of VM nobody\n');
    assert.deepEqual(f.spy.requests.at(-1)?.params, { vm: 'nobody' });
  });

  it('fork options that a snapshot decides, or without one, are refused before sending', async () => {
    const n = f.spy.requests.length;
    const cases: [string[], RegExp][] = [
      [['--count', '2'], /--count goes with --from-snapshot/],
      [['--wait'], /--wait goes with --from-snapshot/],
      [
        ['--from-snapshot', 'warm', '--image', 'default', '--vcpus', '2', '--disk', 'd1'],
        /--image, --vcpus, --disk cannot go with --from-snapshot: a VM made from a snapshot has the snapshot's image/,
      ],
      [['--from-snapshot', 'warm', '--user-data', 'x.yaml'], /--user-data cannot go with/],
      [
        ['--from-snapshot', 'warm', '--count', '65'],
        /--count wants a whole number from 1 to 64, got '65'/,
      ],
      [
        ['--from-snapshot', 'warm', '--count', '0'],
        /--count wants a whole number from 1 to 64, got '0'/,
      ],
    ];
    for (const [args, why] of cases) {
      const r = await mvirt(['vm', 'create', 'f', ...args]);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.err, why);
      assert.match(r.err, /Run 'mvirt vm create --help' for usage\./);
    }
    assert.equal(f.spy.requests.length, n, 'nothing was sent');
  });

  it('an unknown snapshot is SNAPSHOT_NOT_FOUND with where to look, and makes no VM', async () => {
    for (const args of [
      ['vm', 'create', 'f', '--from-snapshot', 'nope'],
      ['snapshot', 'get', 'nope'],
      ['snapshot', 'rm', 'nope'],
      ['snapshot', 'rm', 'nope', '--dry-run'],
    ]) {
      const r = await mvirt(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.equal(
        r.err,
        'mvirt: no snapshot with id or name nope [SNAPSHOT_NOT_FOUND]\n' +
          'hint: `mvirt snapshot ls` lists the VM snapshots; `mvirt volume snapshots VOLUME` those of a volume\n',
      );
    }
    assert.equal((await mvirt(['vm', 'get', 'f'])).code, 1, 'no VM f');
  });

  it('a stopped VM cannot be snapshotted or suspended: VM_BAD_STATE and what to do', async () => {
    await mvirt(['vm', 'create', 'cold']);
    for (const args of [
      ['vm', 'snapshot', 'cold', 's1'],
      ['vm', 'snapshot', 'cold', 's1', '--dry-run'],
      ['vm', 'suspend', 'cold'],
      ['vm', 'suspend', 'cold', '--dry-run'],
    ]) {
      const r = await mvirt(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(
        r.err,
        /^mvirt: VM cold is stopped; cannot (snapshot|suspend) it \[VM_BAD_STATE\]$/m,
      );
      assert.match(
        r.err,
        /^hint: only a VM that runs \(ready, busy, running, paused\) can be (snapshotted|suspended); start it first \(`mvirt vm start cold`\)$/m,
      );
    }
    assert.equal(JSON.parse((await mvirt(['snapshot', 'ls', '--json'])).out).snapshots.length, 0);
  });

  it('dry runs of vm snapshot and vm suspend show the plan and change nothing', async () => {
    await f.j.serviceVm('src');
    const id = await idOf('src');
    let r = await mvirt(['vm', 'snapshot', 'src', 'warm', '--dry-run']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^Dry run of vm\.snapshot: nothing was changed\.$/m);
    assert.match(r.out, /^ {2}VM src is ready: its state can be saved$/m);
    assert.match(r.out, /^ {2}snapshot warm: created from VM src$/m);
    assert.deepEqual(f.spy.requests.at(-1)?.params, { vm: id, name: 'warm', dryRun: true });
    assert.equal(r.err, '', 'no progress for a save that was not made');
    r = await mvirt(['vm', 'suspend', 'src', '--dry-run', '--json']);
    assert.equal(r.code, 0, r.err);
    const plan = JSON.parse(r.out) as { method: string; files: { create: string[] } };
    assert.equal(plan.method, 'vm.suspend');
    assert.deepEqual(plan.files.create, [`vm/${id}/suspend/`]);
    assert.equal(result(await f.j.c.call('vm.get', { vm: 'src' })).state, 'ready');
    assert.equal(JSON.parse((await mvirt(['snapshot', 'ls', '--json'])).out).snapshots.length, 0);
  });

  it('vm snapshot, snapshot ls and get, forks with --count --wait, vm ls and get, snapshot rm', async () => {
    const src = await idOf('src');
    let r = await mvirt(['vm', 'snapshot', 'src', 'warm']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^snapshot warm \(snap-[0-9a-f]{12}\) of src: 64 KiB saved in \S+/m);
    assert.match(r.out, /^fork it with `mvirt vm create NAME --from-snapshot warm`$/m);
    assert.match(r.err, /^saving the state of src \(vm-\w+\)…$/m);
    assert.match(r.err, /^ {2}src: paused \(saving its state \(snapshot\)\) after/m);
    assert.match(r.err, /^ {2}src: ready \(state saved\) after/m);
    assert.equal(result(await f.j.c.call('vm.get', { vm: 'src' })).state, 'ready');

    // Made within the test: "just now", or seconds ago on a loaded machine
    // ("2s ago" at load 15, 2026-12-07).
    r = await mvirt(['snapshot', 'ls']);
    assert.match(
      r.out,
      /^NAME +ID +VM +IMAGE +SIZE +VCPUS +MEMORY +MACHINE +CREATED\nwarm +snap-\w+ +src +default +64 KiB +1 +256 MiB +fake-machine +(just now|\d+s ago)\n$/,
    );
    const [snap] = JSON.parse((await mvirt(['snapshot', 'ls', '--json', '--vm', 'src'])).out)
      .snapshots as { id: string; name: string; bytes: number; source: { vm: string } }[];
    assert.equal(snap?.name, 'warm');
    assert.equal(snap.bytes, FAKE_STATE_BYTES);
    assert.equal(snap.source.vm, src);
    r = await mvirt(['snapshot', 'get', 'warm']);
    assert.match(r.out, new RegExp(`^Source VM: +src \\(${src}\\)$`, 'm'));
    assert.match(r.out, /^Hypervisor: +fake 1\.0, machine fake-machine$/m);
    assert.match(r.out, /^Size: +64 KiB \(65536 bytes\)$/m);
    assert.match(r.out, /^VMs from it: +none$/m);

    r = await mvirt(['vm', 'create', 'w', '--from-snapshot', 'warm', '--count', '2', '--dry-run']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^Dry run of vm\.create: nothing was changed\.$/m);
    assert.match(r.out, /^ {2}names w-1, w-2 are free$/m);
    assert.match(r.out, /^ {2}vm w-2: created from snapshot warm, starting$/m);
    assert.equal(r.err, '');
    assert.equal((await mvirt(['vm', 'get', 'w-1'])).code, 1, 'no fork was made');

    r = await mvirt(['vm', 'create', 'w', '--from-snapshot', 'warm', '--count', '2', '--wait']);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(f.spy.requests.at(-1)?.params, {
      name: 'w',
      fromSnapshot: 'warm',
      count: 2,
      wait: true,
    });
    assert.match(
      r.err,
      new RegExp(`^resuming 2 VMs \\(w-1 … w-2\\) from snapshot warm \\(${snap.id}\\)…$`, 'm'),
    );
    assert.match(r.err, /^ {2}w-2: ready \(the agent is ready\) after/m);
    for (const n of ['w-1', 'w-2'])
      assert.match(
        r.out,
        new RegExp(
          `^created ${n} \\(vm-\\w+\\) from snapshot warm: 1 vCPU, 256 MiB, ready after \\S+`,
          'm',
        ),
      );

    r = await mvirt(['vm', 'ls']);
    assert.match(r.out, /^NAME +ID +STATE +VCPUS +MEMORY +KIND +IMAGE +FROM +CREATED$/m);
    assert.match(
      r.out,
      /^src +vm-\w+ +ready +1 +256 MiB +service +default +- +(just now|\d+s ago)$/m,
    );
    assert.match(
      r.out,
      /^w-1 +vm-\w+ +ready +1 +256 MiB +service +default +warm +(just now|\d+s ago)$/m,
    );
    r = await mvirt(['vm', 'get', 'w-2']);
    assert.match(r.out, new RegExp(`^Restored from: +warm \\(${snap.id}\\)$`, 'm'));
    assert.match(
      r.out,
      /^Last restore: +resumed from snapshot warm \(generation 1\): running \S+ m?s after spawn, ready after/m,
    );
    r = await mvirt(['snapshot', 'get', 'warm']);
    assert.match(r.out, /^VMs from it: +w-1 \(ready\), w-2 \(ready\)$/m);

    r = await mvirt(['snapshot', 'rm', 'warm', '--dry-run']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^Dry run of snapshot\.delete: nothing was changed\.$/m);
    assert.match(r.out, new RegExp(`^ {2}snapshots/${snap.id}/$`, 'm'));
    assert.equal((await mvirt(['snapshot', 'get', 'warm'])).code, 0, 'still there');
    r = await mvirt(['snapshot', 'rm', 'warm']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'deleted snapshot warm\n');
    assert.match((await mvirt(['snapshot', 'ls'])).out, /^no VM snapshots yet/);
    r = await mvirt(['vm', 'get', 'w-1']);
    assert.match(
      r.out,
      new RegExp(`^Restored from: +${snap.id} \\(deleted or not visible\\)$`, 'm'),
    );
  });

  it('a fork that cannot resume (damaged state) fails typed, and names the VM it left', async () => {
    const r0 = await mvirt(['vm', 'snapshot', 'src', 'frail', '--json']);
    assert.equal(r0.code, 0, r0.err);
    const snap = JSON.parse(r0.out) as { id: string };
    const fh = await open(path.join(f.j.dataDir, 'snapshots', snap.id, 'state.bin'), 'r+');
    await fh.write(Buffer.from('garbage'), 0, 7, 100);
    await fh.close();
    const r = await mvirt(['vm', 'create', 'bad', '--from-snapshot', 'frail']);
    assert.equal(r.code, 1);
    assert.match(r.err, /sha256.*\[SNAPSHOT_INVALID\]/);
    assert.match(
      r.err,
      /^hint: these VMs were made from the snapshot before it failed: bad \((failed|stopped)\); remove each with `mvirt vm rm -f NAME`$/m,
    );
    assert.equal((await mvirt(['vm', 'rm', '-f', 'bad'])).code, 0);
    assert.equal((await mvirt(['snapshot', 'rm', 'frail'])).code, 0);
  });

  it('vm suspend, then vm start resumes it; vm resume points at vm start', async () => {
    let r = await mvirt(['vm', 'suspend', 'src']);
    assert.equal(r.code, 0, r.err);
    assert.match(
      r.out,
      /^src \(vm-\w+\) is suspended after \S+ m?s; `mvirt vm start src` resumes it$/m,
    );
    assert.match(r.err, /^ {2}src: suspended \(65536 bytes saved\) after/m);
    r = await mvirt(['vm', 'ls', '--state', 'suspended']);
    assert.match(r.out, /^src +vm-\w+ +suspended +1 +256 MiB/m);
    r = await mvirt(['vm', 'get', 'src']);
    assert.match(r.out, /^State: +suspended \(65536 bytes saved\)$/m);
    assert.match(r.out, /^Resume: +`mvirt vm start src` resumes it; `mvirt vm stop src` drops/m);

    r = await mvirt(['vm', 'resume', 'src']);
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /\[VM_BAD_STATE\]\nhint: a suspended VM resumes with `mvirt vm start src`\n$/,
    );
    r = await mvirt(['vm', 'snapshot', 'src', 'late']);
    assert.equal(r.code, 1);
    assert.match(r.err, /it is suspended already: `mvirt vm start src` resumes it$/m);

    r = await mvirt(['vm', 'start', 'src']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /^resuming src \(vm-\w+\) from its suspended state…$/m);
    assert.match(r.out, /^src \(vm-\w+\) is ready after/m);
    r = await mvirt(['vm', 'get', 'src']);
    assert.match(r.out, /^Last restore: +resumed from its suspended state \(generation \d+\)/m);
    assert.doesNotMatch(r.out, /^Restored from:/m, 'a resume is not a fork');
  });
});
