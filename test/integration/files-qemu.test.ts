/**
 * Files in and out of a real microVM under QEMU with `mvirt cp` (the built
 * CLI in its own process, the real mvirtd and agent): a 50 MiB random file
 * is byte-identical after a round trip, a directory tree comes back as it
 * went in, and copies cut by a VM kill leave no file that looks complete on
 * either side. One VM for all of it.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import { imagesDir } from '../../harness/build.js';
import type { RpcClient } from '../../harness/client.js';
import type { DaemonAddress } from '../../harness/connect.js';
import { REPO } from '../../harness/paths.js';
import type { EventRecord } from '../../protocol/rpc.js';
import { mvirt, startMvirt } from '../support/cli.js';
import { BOOT_MS, explained, ok, qemuDaemon, tempDataDir, trackPid } from '../support/qemu.js';

const COPY_MS = 180_000;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Every file, directory and link under `dir`, with contents, as one comparable list. */
function tree(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const name of readdirSync(path.join(dir, rel)).sort()) {
    const r = path.join(rel, name);
    const p = path.join(dir, r);
    const st = lstatSync(p);
    if (st.isSymbolicLink()) out.push(`l ${r} ${readlinkSync(p)}`);
    else if (st.isDirectory()) out.push(`d ${r} ${st.mode & 0o777}`, ...tree(dir, r));
    else out.push(`f ${r} ${st.mode & 0o777} ${sha(readFileSync(p))}`);
  }
  return out;
}

describe('mvirt cp against a real microVM', { timeout: BOOT_MS + 4 * COPY_MS }, () => {
  let c: RpcClient;
  let daemon: DaemonAddress;
  let work: string;
  let big: Buffer;
  before(async () => {
    await imagesDir({ dataDir: path.join(REPO, 'test-output/data') });
    const dataDir = await tempDataDir('mvirt-files-it-');
    work = path.join(dataDir, 'work');
    await mkdir(work);
    const q = await qemuDaemon(dataDir);
    c = q.c;
    daemon = q.d;
    ok(await c.call('vm.create', { name: 'files', memoryMiB: 512 }));
    const vm = ok(
      await c.call('vm.start', { vm: 'files', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(vm.pid);
    big = randomBytes(50 * 1024 * 1024);
    await writeFile(path.join(work, 'big'), big, { mode: 0o640 });
  });

  it('copies a 50 MiB random file in and out byte-identical', async () => {
    await explained(async () => {
      const t0 = Date.now();
      const r = await mvirt(['cp', path.join(work, 'big'), 'files:/tmp/'], { daemon });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`to files:/tmp/big \\(sha256 ${sha(big)}\\)`));
      const inMs = Date.now() - t0;
      const st = ok(await c.call('fs.stat', { vm: 'files', path: '/tmp/big' }));
      assert.deepEqual([st.type, st.size, st.mode], ['file', big.length, 0o640]);
      const sum = ok(
        await c.call(
          'job.run',
          { vm: 'files', argv: ['sha256sum', '/tmp/big'], wait: true },
          { timeoutMs: COPY_MS },
        ),
      );
      assert.equal(sum.stdout!.split(' ')[0], sha(big));
      // No partial file is left beside it.
      const list = ok(await c.call('fs.list', { vm: 'files', path: '/tmp' }));
      assert.deepEqual(
        list.entries.filter((e) => e.name.includes('mvirt')).map((e) => e.name),
        [],
      );

      const t1 = Date.now();
      const back = await mvirt(['cp', 'files:/tmp/big', path.join(work, 'big-back')], { daemon });
      assert.equal(back.code, 0, back.stderr);
      const outMs = Date.now() - t1;
      const got = readFileSync(path.join(work, 'big-back'));
      assert.ok(got.equals(big), 'byte-identical');
      assert.deepEqual(
        readdirSync(work).filter((n) => n.includes('mvirt')),
        [],
      );
      // For the report: what a 50 MiB copy costs here (TCG).
      console.log(`# 50 MiB in ${inMs} ms, out ${outMs} ms`);
    });
  });

  it('copies a directory tree in and back as it was', async () => {
    await explained(async () => {
      const src = path.join(work, 'tree');
      await mkdir(path.join(src, 'a', 'b', 'c'), { recursive: true });
      await mkdir(path.join(src, 'empty'));
      await writeFile(path.join(src, 'top.txt'), 'hello\n');
      await writeFile(path.join(src, 'a', 'bin'), randomBytes(700_000), { mode: 0o755 });
      await writeFile(path.join(src, 'a', 'b', 'c', 'deep'), randomBytes(3000), { mode: 0o600 });
      await writeFile(path.join(src, 'a', 'name with spaces'), 'x');
      await symlink('top.txt', path.join(src, 'link'));
      const r = await mvirt(['cp', src, 'files:/tmp/tree-in'], { daemon });
      assert.equal(r.code, 0, r.stderr);
      const deep = ok(await c.call('fs.stat', { vm: 'files', path: '/tmp/tree-in/a/b/c/deep' }));
      assert.equal(deep.size, 3000);
      const link = ok(await c.call('fs.stat', { vm: 'files', path: '/tmp/tree-in/link' }));
      assert.deepEqual([link.type, link.target], ['symlink', 'top.txt']);

      const back = await mvirt(['cp', 'files:/tmp/tree-in', path.join(work, 'tree-back')], {
        daemon,
      });
      assert.equal(back.code, 0, back.stderr);
      assert.deepEqual(tree(path.join(work, 'tree-back')), tree(src));
      assert.equal(readlinkSync(path.join(work, 'tree-back', 'link')), 'top.txt');
    });
  });

  it('says what is wrong: no such VM, no such file', async () => {
    const noVm = await mvirt(['cp', path.join(work, 'big'), 'nope:/tmp/x'], { daemon });
    assert.equal(noVm.code, 1);
    assert.match(noVm.stderr, /VM_NOT_FOUND/);
    const noFile = await mvirt(['cp', 'files:/no/such', path.join(work, 'x')], { daemon });
    assert.equal(noFile.code, 1);
    assert.match(noFile.stderr, /FILE_NOT_FOUND/);
    assert.equal(existsSync(path.join(work, 'x')), false);
  });

  it('copies cut by a VM kill leave no file that looks complete', async () => {
    await explained(async () => {
      const into = startMvirt(['cp', path.join(work, 'big'), 'files:/tmp/cut-in'], { daemon });
      const out = startMvirt(['cp', 'files:/tmp/big', path.join(work, 'cut-out')], { daemon });
      // Both under way: the guest has the hidden partial file, and so has the host.
      for (;;) {
        const l = ok(await c.call('fs.list', { vm: 'files', path: '/tmp' }));
        const part = l.entries.find((e) => e.name.startsWith('.cut-in.mvirt-'));
        const local = readdirSync(work).find((n) => n.startsWith('.cut-out.mvirt-'));
        if (part && part.size > 0 && local && statSync(path.join(work, local)).size > 0) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      ok(await c.call('vm.kill', { vm: 'files' }));
      const [a, b] = await Promise.all([into.done, out.done]);
      assert.notEqual(a.code, 0, 'copy in reported a failure');
      assert.notEqual(b.code, 0, 'copy out reported a failure');
      assert.match(a.stderr, /AGENT_UNAVAILABLE|TRANSFER_NOT_FOUND|VM_BAD_STATE/);
      assert.doesNotMatch(a.stdout + b.stdout, /copied/);
      // Nothing here under the target's name, and the partial file is gone.
      assert.deepEqual(
        readdirSync(work).filter((n) => n.includes('cut-out')),
        [],
      );
      // mvirtd never recorded the cut write as complete.
      const events = ok(await c.call('events.query', { level: 'audit' })).events;
      assert.ok(events.some((e: EventRecord) => e.message.includes('writing /tmp/cut-in')));
      assert.equal(
        events.some((e: EventRecord) => e.message.includes('wrote /tmp/cut-in')),
        false,
      );
    });
  });
});
