/**
 * SQLite durability: mvirtd is SIGKILLed while creating VMs as fast as a
 * controller can ask; after a restart the database passes integrity_check
 * and every change the daemon acknowledged is there.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { makeTempDir, removeDir } from '../../harness/paths.js';
import { rpcClient } from '../../harness/client.js';
import { writeFakeImage, HOST_ID, spawnDaemon } from '../../harness/daemon.js';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await removeDir(d);
});

test(
  'kill -9 during writes: integrity ok, no acknowledged change lost',
  { timeout: 120_000 },
  async () => {
    const dataDir = await makeTempDir('mvirt-crash-');
    dirs.push(dataDir);
    await writeFakeImage(path.join(dataDir, 'images'));
    const args = ['--data-dir', dataDir, '--listen', '127.0.0.1:0', '--host-id', HOST_ID];
    const d = await spawnDaemon(args);
    const c = await rpcClient(d);
    const acked: string[] = [];
    const KILL_AFTER = 60;
    let killed = false;
    // Keep 8 requests in flight so the kill lands in the middle of writes.
    let next = 0;
    await new Promise<void>((resolve) => {
      const pump = (): void => {
        if (killed) return;
        const name = `crash-${next++}`;
        c.call('vm.create', { name }, { timeoutMs: 5000 }).then(
          (r) => {
            if (r.ok) acked.push(name);
            if (acked.length >= KILL_AFTER && !killed) {
              killed = true;
              d.child.kill('SIGKILL');
              resolve();
            } else pump();
          },
          () => undefined, // no reply: the daemon is gone
        );
      };
      for (let i = 0; i < 8; i++) pump();
    });
    await d.exited;
    c.mqtt.end(true); // the broker is gone: do not wait for a DISCONNECT round trip

    const db = new Database(path.join(dataDir, 'mvirt.db'));
    assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
    const names = new Set(
      (db.prepare('SELECT name FROM vms').all() as { name: string }[]).map((r) => r.name),
    );
    db.close();
    for (const n of acked) assert.ok(names.has(n), `acknowledged ${n} lost`);
    assert.ok(acked.length >= KILL_AFTER);

    // And the daemon starts again on that database.
    const again = await spawnDaemon(args);
    const c2 = await rpcClient(again);
    const r = await c2.call('vm.list');
    assert.ok(r.ok && r.result.vms.length >= acked.length);
    await c2.close();
    again.child.kill('SIGTERM');
    const ex = await again.exited;
    assert.equal(ex.code, 0, 'clean exit on SIGTERM');
  },
);
