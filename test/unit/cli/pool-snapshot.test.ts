/**
 * `mvirt pool set --snapshot | --from-snapshot S | --boot` in-process against
 * the real mvirtd on a fake backend that can save state: what is sent, what
 * is refused before sending, and how `pool set|ls|get` show where a pool's
 * VMs come from; `snapshot rm` of a snapshot a pool forks is refused.
 */
import { describe, it } from 'node:test';
import { snapshotCliFixture } from '../../support/cli-snapshots.js';
import assert from 'node:assert/strict';
import { result } from '../../support/jobs.js';

describe('mvirt pool set with snapshots against mvirtd', () => {
  const f = snapshotCliFixture();
  const mvirt = f.mvirt;
  /** The params of the last pool.set the daemon got. */
  const lastSet = (): unknown =>
    f.spy.requests.filter((r) => r.method === 'pool.set').at(-1)?.params;
  const readyIn = (pool: string, n: number) =>
    f.j.rec.until(
      () => (f.j.rec.poolStates(pool).at(-1)?.vms.ready === n ? true : undefined),
      `${n} ready in ${pool}`,
    );

  it('help names the three ways', async () => {
    const r = await mvirt(['pool', 'set', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.out, /--snapshot +VMs are forks of mvirtd's template snapshot of the image/);
    assert.match(r.out, /--from-snapshot SNAPSHOT +VMs are forks of this VM snapshot/);
    assert.match(r.out, /--boot +VMs boot \(undoes --snapshot and --from-snapshot\)/);
    assert.match(r.out, /mvirt pool set warm --min 2 --from-snapshot base/);
  });

  it('contradictions are refused before sending', async () => {
    const n = f.spy.requests.length;
    const cases: [string[], RegExp][] = [
      [
        ['--snapshot', '--from-snapshot', 'base'],
        /^mvirt: --snapshot and --from-snapshot cannot go together: /m,
      ],
      [['--boot', '--snapshot'], /^mvirt: --snapshot and --boot cannot go together/m],
      [
        ['--from-snapshot', 'base', '--image', 'default', '--memory', '512'],
        /^mvirt: --image, --memory cannot go with --from-snapshot: the pool takes the snapshot's image and size \(`mvirt snapshot get base` shows them\)$/m,
      ],
    ];
    for (const [args, why] of cases) {
      const r = await mvirt(['pool', 'set', 'p', '--min', '1', ...args]);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.err, why);
      assert.match(r.err, /Run 'mvirt pool set --help' for usage\./);
    }
    assert.equal(f.spy.requests.length, n, 'nothing was sent');
  });

  it('--snapshot, --from-snapshot and --boot: sent, stored, shown', async () => {
    let r = await mvirt(['pool', 'set', 'fast', '--min', '1', '--snapshot']);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(lastSet(), { name: 'fast', min: 1, snapshot: true });
    assert.match(
      r.out,
      /^pool fast: 1–1 VMs of default \(1 vCPU, 256 MiB\), forks of mvirtd's template snapshot of its image and size; now \d+ ready/,
    );

    await f.j.serviceVm('src');
    const snap = result(await f.j.c.call('vm.snapshot', { vm: 'src', name: 'base' }));
    r = await mvirt(['pool', 'set', 'forks', '--min', '1', '--from-snapshot', 'base']);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(lastSet(), { name: 'forks', min: 1, fromSnapshot: 'base' });
    assert.match(r.out, new RegExp(`, forks of snapshot base \\(${snap.id}\\); now `));
    await readyIn('fast', 1);
    await readyIn('forks', 1);

    r = await mvirt(['pool', 'ls']);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trimEnd().split('\n');
    assert.match(lines[0]!, /^NAME +IMAGE +MIN +MAX +VCPUS +MEMORY +READY +STARTING +BUSY +FROM$/);
    assert.match(lines[1]!, /^fast +default +1 +1 +1 +256 MiB +1 +0 +0 +template$/);
    assert.match(lines[2]!, /^forks +default +1 +1 +1 +256 MiB +1 +0 +0 +base$/);
    r = await mvirt(['pool', 'get', 'forks']);
    assert.match(r.out, new RegExp(`^Made as: +forks of snapshot base \\(${snap.id}\\)$`, 'm'));
    assert.doesNotMatch(r.out, /^Problem:/m);

    r = await mvirt(['snapshot', 'rm', 'base']);
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /^mvirt: snapshot base is what pool forks makes its VMs from; .* \[SNAPSHOT_IN_USE\]$/m,
    );
    assert.match(r.err, /^hint: .*`mvirt pool set POOL --from-snapshot S`/m);

    r = await mvirt(['pool', 'set', 'forks', '--min', '1', '--boot']);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(lastSet(), { name: 'forks', min: 1, snapshot: false });
    assert.match(r.out, /^pool forks: 1–1 VMs of default \(1 vCPU, 256 MiB\); now /);
    r = await mvirt(['pool', 'get', 'forks']);
    assert.match(r.out, /^Made as: +booted$/m);
    // The pool no longer forks it: the snapshot can go.
    assert.equal((await mvirt(['snapshot', 'rm', 'base'])).code, 0);
    for (const p of ['fast', 'forks']) assert.equal((await mvirt(['pool', 'rm', p])).code, 0);
  });
});
