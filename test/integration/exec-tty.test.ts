/**
 * `mvirt exec -it` at a terminal (a pseudo-terminal on this host, held by
 * test/support/pty-driver.py) against the real mvirtd and one real microVM:
 * the guest shell sees the terminal's size and follows a resize, Ctrl-C
 * typed here interrupts the guest's `sleep 100` (through the guest's pty),
 * `exit 3` is mvirt's exit code 3, and the terminal here is left as it was
 * found, also when mvirt is ended by a signal.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { ensureBuilt, imagesDir } from '../../harness/build.js';
import type { RpcClient } from '../../harness/client.js';
import { cliEnv, type DaemonAddress } from '../../harness/connect.js';
import { REPO } from '../../harness/paths.js';
import { startOnPty } from '../support/pty.js';
import { BOOT_MS, explained, ok, qemuDaemon, tempDataDir, trackPid } from '../support/qemu.js';

const STEP_MS = 120_000;
const ESC = String.fromCharCode(0x1b);

describe('mvirt exec -it against a real microVM', { timeout: BOOT_MS + 3 * STEP_MS }, () => {
  let c: RpcClient;
  let daemon: DaemonAddress;
  before(async () => {
    ensureBuilt();
    await imagesDir({ dataDir: path.join(REPO, 'test-output/data') });
    const dataDir = await tempDataDir('mvirt-exec-tty-');
    const q = await qemuDaemon(dataDir);
    c = q.c;
    daemon = q.d;
    ok(await c.call('vm.create', { name: 'shell', memoryMiB: 256 }));
    const vm = ok(
      await c.call('vm.start', { vm: 'shell', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(vm.pid);
  });

  const execShell = (rows: number, cols: number) =>
    startOnPty(
      [
        process.execPath,
        path.join(REPO, 'bin/mvirt.js'),
        'exec',
        '-it',
        '--env',
        'PS1=guest$ ',
        'shell',
        '--',
        'sh',
      ],
      {
        rows,
        cols,
        env: {
          ...process.env,
          MVIRT_BROKER: '',
          MVIRT_HOST: '',
          MVIRT_PREFIX: '',
          ...cliEnv(daemon),
          TERM: 'xterm',
        },
      },
    );

  it('a shell: its size, a resize, Ctrl-C of sleep 100, exit 3', async () => {
    await explained(async () => {
      const t = execShell(30, 100);
      let at = await t.waitScreen(/guest\$ /);
      t.type('stty size\r');
      at = await t.waitScreen(/\r\n30 100\r\n/, at);

      await t.resize(40, 120);
      // The guest's shell redraws its line on SIGWINCH: the new size is there.
      at = await t.waitScreen(new RegExp(`\rguest\\$ ${ESC}\\[J`), at);
      t.type('stty size\r');
      at = await t.waitScreen(/\r\n40 120\r\n/, at);

      const started = Date.now();
      t.type('echo started; sleep 100\r');
      at = await t.waitScreen(/\r\nstarted\r\n/, at);
      t.type('\x03'); // Ctrl-C, sent as a byte by the raw terminal
      t.type('echo status-$?\r');
      await t.waitScreen(/status-130\r\n/, at);
      assert.ok(Date.now() - started < 60_000, 'sleep 100 was interrupted');

      // The job is a tty job, seen from the API too.
      const jobs = ok(await c.call('job.list', { vm: 'shell', state: 'running' })).jobs;
      assert.equal(jobs.length, 1);
      assert.deepEqual(jobs[0]!.tty, { cols: 100, rows: 30 });

      t.type('exit 3\r');
      const r = await t.done;
      assert.equal(r.code, 3, r.screen);
      assert.equal(r.restored, true, 'the terminal is left as it was found');
      const rec = ok(await c.call('job.get', { jobId: jobs[0]!.jobId }));
      assert.equal(rec.state, 'failed');
      assert.equal(rec.exitCode, 3);
    });
  });

  it('a signal to mvirt cancels the guest shell and restores the terminal', async () => {
    await explained(async () => {
      const t = execShell(24, 80);
      await t.waitScreen(/guest\$ /);
      process.kill(await t.pid(), 'SIGTERM');
      const r = await t.done;
      // Cancelled (the guest's interactive sh ignores SIGTERM: killed after the grace).
      assert.equal(r.code, 130, r.screen);
      assert.match(r.screen, /was cancelled/);
      assert.equal(r.restored, true, 'the terminal is left as it was found');
    });
  });
});
