/**
 * VM snapshots and forks in real microVMs under QEMU (TCG), through mvirtd: a
 * VM with state in guest memory (a tmpfs file, a counting process) is
 * snapshotted and goes on; two forks resume from the snapshot without
 * booting. Both have the state, and each its own id, hostname, agent subtree
 * and randomness, and a clock within 100 ms of the host's; each runs a job;
 * neither can publish in the other's subtree. A snapshot whose files were
 * damaged or whose manifest was edited is refused, typed, and nothing starts.
 */
import assert from 'node:assert/strict';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import type { RpcClient } from '../../harness/client.js';
import type { VmRecord } from '../../protocol/rpc.js';
import {
  BOOT_MS,
  explained,
  ok,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const JOB_MS = 120_000;

async function sh(c: RpcClient, vm: string, script: string): Promise<string> {
  const r = ok(
    await c.call('job.run', { vm, argv: ['sh', '-c', script], wait: true }, { timeoutMs: JOB_MS }),
  );
  assert.equal(r.exitCode, 0, r.stderr);
  return r.stdout ?? '';
}

/** The guest's clock minus the host's, in ms, from one job (busybox date has whole seconds only: adjtimex gives µs). */
async function clockSkewMs(c: RpcClient, vm: string): Promise<number> {
  const before = Date.now();
  const out = await sh(
    c,
    vm,
    'cat /proc/uptime >/dev/null; adjtimex | sed -n "s/.*tv_sec: *//p;s/.*tv_usec: *//p"',
  );
  const after = Date.now();
  const [sec, usec] = out.trim().split('\n').map(Number);
  const guest = sec! * 1000 + usec! / 1000;
  // The job ran somewhere between before and after: bound by the nearer end.
  if (guest < before) return guest - before;
  if (guest > after) return guest - after;
  return 0;
}

/** Wait until the VM's record says the agent's clock step is done. */
async function restoredRecord(c: RpcClient, vm: string): Promise<VmRecord> {
  const until = Date.now() + 60_000;
  for (;;) {
    const rec = ok(await c.call('vm.get', { vm }));
    if (rec.restore?.clockStepMs !== undefined) return rec;
    if (Date.now() > until)
      throw new Error(`no restore report for ${vm}: ${JSON.stringify(rec.restore)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test(
  'a snapshot of a live VM forks into two VMs, each its own and both with the state',
  { skip, timeout: 1_800_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-snap-');
      const { c } = await qemuDaemon(dataDir);
      ok(await c.call('vm.create', { name: 'src', memoryMiB: 256 }));
      const src = ok(
        await c.call('vm.start', { vm: 'src', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      );
      trackPid(src.pid);
      const coldReadyMs = src.boot?.readyAtMs ?? 0;
      await sh(
        c,
        'src',
        'mkdir -p /run/t && echo kept-in-ram > /run/t/file; (i=0; while true; do i=$((i+1)); echo $i > /run/t/count; sleep 0.05; done) </dev/null >/dev/null 2>&1 &',
      );
      const snap = ok(
        await c.call('vm.snapshot', { vm: 'src', name: 'base' }, { timeoutMs: JOB_MS }),
      );
      assert.equal(snap.state, 'ready');
      assert.equal(snap.source.vm, src.id);
      assert.match(snap.hypervisor.machine, /^pc-i440fx-/);
      assert.ok(snap.bytes > 1_000_000);
      // The source goes on as it was.
      assert.equal(ok(await c.call('vm.get', { vm: 'src' })).state, 'ready');
      assert.match(await sh(c, 'src', 'cat /run/t/file'), /kept-in-ram/);
      const listed = ok(await c.call('snapshot.list', {}));
      assert.deepEqual(
        listed.snapshots.map((s) => s.name),
        ['base'],
      );

      const t0 = performance.now();
      const made = ok(
        await c.call(
          'vm.create',
          { name: 'fork', fromSnapshot: 'base', count: 2, wait: true },
          { timeoutMs: BOOT_MS + 10_000 },
        ),
      );
      const forkWallMs = performance.now() - t0;
      const forks = [made, ...(made.forks ?? [])];
      assert.deepEqual(
        forks.map((f) => f.name),
        ['fork-1', 'fork-2'],
      );
      for (const f of forks) {
        trackPid(f.pid);
        assert.equal(f.state, 'ready');
        assert.equal(f.restoredFrom, snap.id);
      }
      console.log(
        `# cold boot → ready ${coldReadyMs} ms; 2 forks → ready ${forkWallMs.toFixed(0)} ms (each ${forks.map((f) => f.restore?.readyAtMs).join(', ')} ms from spawn)`,
      );

      const seen = [];
      for (const f of forks) {
        const rec = await restoredRecord(c, f.name);
        assert.equal(rec.restore?.previousVm, src.id, 'the agent says it was the source');
        if (rec.network.mode === 'bridge') {
          // Its own MAC and address, and its link up only once it had them.
          assert.equal(rec.restore?.network, 'applied');
          assert.notEqual(rec.ip, src.ip);
          const nic = await sh(
            c,
            f.name,
            'cat /sys/class/net/eth0/address /sys/class/net/eth0/carrier; ip -4 addr show eth0',
          );
          assert.match(nic, new RegExp(`^${rec.mac}\n1\n`), nic);
          assert.match(nic, new RegExp(`inet ${rec.ip!.replace(/\./g, '\\.')}/`), nic);
        }
        assert.ok((rec.restore?.entropyBytes ?? 0) >= 64);
        const out = await sh(
          c,
          f.name,
          'cat /run/t/file; cat /run/t/count; hostname; head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo',
        );
        const [file, count, hostname, random] = out.trim().split('\n');
        assert.equal(file, 'kept-in-ram', 'the snapshot’s tmpfs file');
        assert.ok(Number(count) > 0, 'the counting process runs on');
        assert.equal(hostname, f.name);
        // mvirtd's own reading after the step, and the test's.
        const { clockErrorMs, clockErrorBoundMs } = rec.restore!;
        assert.ok(
          Math.abs(clockErrorMs!) <= 50 + clockErrorBoundMs!,
          `mvirtd read the clock ${clockErrorMs} ± ${clockErrorBoundMs} ms off after the step`,
        );
        const skew = await clockSkewMs(c, f.name);
        assert.ok(Math.abs(skew) <= 100, `guest clock ${skew} ms off the host's`);
        seen.push({ id: f.id, hostname, random });
      }
      assert.notEqual(seen[0]!.id, seen[1]!.id);
      assert.notEqual(seen[0]!.random, seen[1]!.random, 'each fork has its own randomness');

      // Deleting the snapshot is fine once every fork has started.
      ok(await c.call('snapshot.delete', { snapshot: 'base' }));
      assert.equal(ok(await c.call('snapshot.list', {})).snapshots.length, 0);
    }),
);

test(
  'damaged or edited snapshots are refused, typed, and nothing starts',
  { skip, timeout: 1_800_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-snapbad-');
      const { c } = await qemuDaemon(dataDir);
      ok(await c.call('vm.create', { name: 'src', memoryMiB: 256 }));
      trackPid(
        ok(await c.call('vm.start', { vm: 'src', wait: true }, { timeoutMs: BOOT_MS + 10_000 }))
          .pid,
      );
      const snap = ok(await c.call('vm.snapshot', { vm: 'src', name: 's' }, { timeoutMs: JOB_MS }));
      const dir = path.join(dataDir, 'snapshots', snap.id);
      const state = path.join(dir, 'state.bin');
      const manifest = path.join(dir, 'manifest.json');
      const original = await readFile(manifest, 'utf8');
      const size = (await stat(state)).size;

      const tryFork = async (name: string, code: string, why: RegExp) => {
        const r = await c.call(
          'vm.create',
          { name, fromSnapshot: 's', wait: true },
          { timeoutMs: BOOT_MS },
        );
        assert.equal(r.ok, false, name);
        assert.equal(r.ok ? '' : r.error.code, code, r.ok ? '' : r.error.message);
        assert.match(r.ok ? '' : r.error.message, why);
        const vm = ok(await c.call('vm.get', { vm: name }));
        // Refused before launch (stopped) or by the launch (failed): never up.
        assert.ok(vm.state === 'stopped' || vm.state === 'failed', vm.state);
        assert.equal(vm.pid, undefined, 'no process left');
        ok(await c.call('vm.delete', { vm: name }));
      };

      // Another machine type in the manifest.
      const m = JSON.parse(original) as { state: { machine: string } };
      m.state.machine = 'pc-q35-7.2';
      await writeFile(manifest, JSON.stringify(m));
      await tryFork('q35', 'SNAPSHOT_INCOMPATIBLE', /machine type pc-q35-7\.2/);
      // A manifest that is not one.
      await writeFile(manifest, '{"format": 1, "unexpected": true}');
      await tryFork('bad-manifest', 'SNAPSHOT_INVALID', /manifest\.json is not a valid manifest/);
      await writeFile(manifest, original);
      // One byte changed inside the state: caught by its sha256 before the guest runs.
      const fh = await open(state, 'r+');
      const one = Buffer.alloc(1);
      await fh.read(one, 0, 1, Math.floor(size / 3));
      one[0] = one[0]! ^ 0xff;
      await fh.write(one, 0, 1, Math.floor(size / 3));
      await fh.close();
      await tryFork('flipped', 'SNAPSHOT_INVALID', /sha256/);
      // Truncated: caught by its size.
      const fh2 = await open(state, 'r+');
      await fh2.truncate(size - 4096);
      await fh2.close();
      await tryFork('truncated', 'SNAPSHOT_INVALID', /bytes, the manifest says/);
      // The source VM was never touched.
      assert.equal(ok(await c.call('vm.get', { vm: 'src' })).state, 'ready');
    }),
);

test(
  'jobs without a VM: the first boots and becomes its kind’s template, the next ones resume from it',
  { skip, timeout: 1_800_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-tmpl-');
      const { c } = await qemuDaemon(dataDir);
      const run = async (script: string) => {
        const t0 = performance.now();
        const r = ok(
          await c.call(
            'job.run',
            { argv: ['sh', '-c', script], memoryMiB: 256, wait: true },
            { timeoutMs: BOOT_MS + JOB_MS },
          ),
        );
        assert.equal(r.exitCode, 0, r.stderr);
        return { r, ms: performance.now() - t0 };
      };
      // The first job's VM boots; it is saved as the template before the job runs.
      const first = await run('echo first > /run/mark');
      const templates = ok(await c.call('snapshot.list', {})).snapshots;
      assert.equal(templates.length, 1);
      assert.match(templates[0]!.name, /^mvirt-template-default-1x256-/);
      assert.equal(templates[0]!.source.vm, first.r.vm);
      // The next jobs' VMs are forks of it: the same boot, none of the first job's traces.
      const second = await run('cat /run/mark 2>/dev/null || echo clean');
      const third = await run('hostname');
      assert.match(
        second.r.stdout!,
        /^clean\n/,
        'a fork of the template, taken before the first job ran',
      );
      assert.notEqual(second.r.vm, first.r.vm);
      // Its own VM's name (a job's VM, or the spare it took), not the template's source's.
      assert.match(third.r.stdout!, /^(job|spare)-[0-9a-f]+\n$/);
      assert.notEqual(third.r.stdout, `job-${first.r.jobId.slice(4, 16)}\n`);
      const restored = ok(
        await c.call('events.query', { objectId: second.r.vm!, limit: 100 }),
      ).events.filter((e) => /restored/.test(e.message));
      assert.equal(restored.length, 1, 'its VM was restored from the template');
      console.log(
        `# job without a VM: first (boot + template) ${first.ms.toFixed(0)} ms, then ${second.ms.toFixed(0)} and ${third.ms.toFixed(0)} ms from the template`,
      );
      assert.ok(second.ms < first.ms / 2, `${second.ms} ms is not well under ${first.ms} ms`);
      // The template is mvirtd's: a user cannot take one of that name.
      const refused = await c.call('vm.snapshot', { vm: 'x', name: templates[0]!.name });
      assert.equal(refused.ok ? '' : refused.error.code, 'INVALID_PARAMS');
    }),
);
