/**
 * `mvirt port-forward` (the built CLI, its own process) against the real
 * mvirtd and one real microVM under QEMU with no network at all (mode none):
 * busybox httpd in the guest, listening on the guest's loopback only, serves
 * a file made in the guest to 20 concurrent downloads through the forward,
 * each byte-identical; the forward ends with the CLI; a viewer is refused.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { get } from 'node:http';
import { userInfo } from 'node:os';
import path from 'node:path';
import { hashPassword } from '../../host/broker/passwords.js';
import { imagesDir } from '../../harness/build.js';
import type { RpcClient } from '../../harness/client.js';
import type { DaemonProcess } from '../../harness/daemon.js';
import { REPO } from '../../harness/paths.js';
import { TEST_ADMIN } from '../../harness/test-admin.js';
import { mvirt, startMvirt } from '../support/cli.js';
import { BOOT_MS, explained, ok, qemuDaemon, tempDataDir, trackPid } from '../support/qemu.js';

const JOB_MS = 120_000;
const FILE_BYTES = 1024 * 1024 + 123;
const DOWNLOADS = 20;

/** GET url: the body's sha256 and length. */
function download(url: string): Promise<{ sha: string; bytes: number; status: number }> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      const h = createHash('sha256');
      let bytes = 0;
      res.on('data', (b: Buffer) => {
        h.update(b);
        bytes += b.length;
      });
      res.on('end', () => resolve({ sha: h.digest('hex'), bytes, status: res.statusCode ?? 0 }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

describe('port-forward to a real microVM', { timeout: BOOT_MS + 4 * JOB_MS }, () => {
  let c: RpcClient;
  let d: DaemonProcess;
  let guestSha: string;

  before(async () => {
    await imagesDir({ dataDir: path.join(REPO, 'test-output/data') });
    const dataDir = await tempDataDir('mvirt-pf-it-');
    const users = path.join(dataDir, 'users.json');
    await writeFile(
      users,
      JSON.stringify({
        users: [
          { username: TEST_ADMIN.username, passwordHash: TEST_ADMIN.passwordHash, role: 'admin' },
          {
            username: 'watcher',
            passwordHash: await hashPassword('pw', { N: 1024, r: 8, p: 1 }),
            role: 'viewer',
          },
        ],
      }),
      { mode: 0o600 },
    );
    const q = await qemuDaemon(dataDir, ['--users', users, '--allow-anonymous']);
    c = q.c;
    d = q.d;
    ok(await c.call('vm.create', { name: 'web', memoryMiB: 256, network: { mode: 'none' } }));
    const vm = ok(
      await c.call('vm.start', { vm: 'web', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(vm.pid);
    // The file is made in the guest; httpd binds before it goes to the
    // background, so once the job has ended it is listening (loopback only).
    const made = ok(
      await c.call(
        'job.run',
        {
          vm: 'web',
          argv: [
            'sh',
            '-c',
            `mkdir -p /tmp/www && head -c ${FILE_BYTES} /dev/urandom > /tmp/www/f && sha256sum /tmp/www/f && httpd -p 127.0.0.1:8080 -h /tmp/www`,
          ],
          wait: true,
        },
        { timeoutMs: JOB_MS },
      ),
    );
    assert.equal(made.exitCode, 0, made.stderr);
    guestSha = made.stdout!.split(' ')[0]!;
  });

  it('serves 20 concurrent downloads byte-identical, and ends with the CLI', async (t) => {
    await explained(async () => {
      const cli = startMvirt(['port-forward', 'web', '0:8080', '-v'], { daemon: d });
      // However the test ends, the forward ends with the CLI.
      t.after(() => void cli.child.kill('SIGKILL'));
      await cli.waitOut('\n');
      const m = /^Forwarding from 127\.0\.0\.1:(\d+) -> web:8080$/m.exec(cli.stdout());
      assert.ok(m, cli.stdout());
      const url = `http://127.0.0.1:${m[1]}/f`;
      const got = await Promise.all(Array.from({ length: DOWNLOADS }, () => download(url)));
      for (const g of got) {
        assert.equal(g.status, 200);
        assert.equal(g.bytes, FILE_BYTES);
        assert.equal(g.sha, guestSha);
      }
      // A client has its body before mvirtd has seen the guest's end of that
      // stream: -v prints each connection's close once it has.
      await new Promise<void>((resolve) => {
        const check = () => {
          if ((cli.stderr().match(/^connection \d+ from .* closed: /gm) ?? []).length < DOWNLOADS)
            return;
          cli.child.stderr!.off('data', check);
          resolve();
        };
        cli.child.stderr!.on('data', check);
        check();
      });
      const listed = ok(await c.call('port.list')).forwards;
      assert.equal(listed.length, 1);
      assert.equal(listed[0]!.totalConnections, DOWNLOADS);
      assert.ok(listed[0]!.bytesFromGuest >= DOWNLOADS * FILE_BYTES);
      cli.child.kill('SIGINT');
      const r = await cli.done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal((r.stderr.match(/^connection \d+ from .* closed: /gm) ?? []).length, DOWNLOADS);
      assert.equal(ok(await c.call('port.list')).forwards.length, 0, 'the forward ended');
      // Who opened it is in the audit log.
      const audit = ok(await c.call('events.query', { level: 'audit' })).events.filter((e) =>
        /^port forward pf-[0-9a-f]+: 127\.0\.0\.1:\d+ → web:8080 opened$/.test(e.message),
      );
      assert.equal(audit.length, 1);
      // The CLI came over the unix socket, as this user.
      assert.equal(audit[0]!.actor, `unix:${userInfo().username}`);
    });
  });

  it('refuses a viewer, and an operator address guests could reach', async () => {
    await explained(async () => {
      const env = { MVIRT_BROKER: d.tcpUrl!, MVIRT_USER: 'watcher', MVIRT_PASSWORD: 'pw' };
      const r = await mvirt(['port-forward', 'web', '0:8080'], { daemon: d, env });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /FORBIDDEN/);
      const wild = await mvirt(['port-forward', 'web', '0.0.0.0:0:8080'], { daemon: d });
      assert.equal(wild.code, 1, wild.stderr);
      assert.match(wild.stderr, /PORT_ADDRESS_REFUSED/);
      assert.equal(ok(await c.call('port.list')).forwards.length, 0);
    });
  });
});
