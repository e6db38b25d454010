/**
 * The agent's helper shell (guest-agent/platform/helper-shell.ts) with a real
 * `sh`: one shell for many commands, each answered with its own exit status
 * in order; a shell that dies is replaced at the next command; words that
 * would need quoting never reach it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createHelperShell } from '../../../guest-agent/platform/helper-shell.js';

const ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

test('one shell runs many commands, each answered with its own exit status, in order', async () => {
  const h = createHelperShell(ENV);
  try {
    h.warm();
    const pid = h.pid;
    assert.ok(pid !== undefined && pid > 0);
    const codes = await Promise.all([
      h.run(['false']),
      h.run(['true']),
      h.run(['test', '-d', '/']),
      h.run(['test', '-d', '/nonexistent-mvirt']),
    ]);
    assert.deepEqual(codes, [1, 0, 0, 1]);
    assert.equal(h.pid, pid, 'the same shell answered them all');
  } finally {
    h.close();
  }
});

test('a shell that died is replaced at the next command', async () => {
  const h = createHelperShell(ENV);
  try {
    assert.equal(await h.run(['true']), 0);
    const first = h.pid!;
    process.kill(first, 'SIGKILL');
    // Either its end is seen before the next command goes out, or that
    // command fails with it and the one after gets a new shell.
    const again = await h.run(['true']).catch(() => h.run(['true']));
    assert.equal(again, 0);
    assert.notEqual(h.pid, first);
  } finally {
    h.close();
  }
});

test('words that would need quoting are refused before anything runs', async () => {
  const h = createHelperShell(ENV);
  try {
    for (const bad of ['a b', '$(reboot)', 'x;y', '`id`', '', "'"]) {
      await assert.rejects(h.run(['echo', bad]), /refusing word/);
    }
    await assert.rejects(h.run([]), /refusing word/);
    assert.equal(h.pid, undefined, 'no shell was even started');
  } finally {
    h.close();
  }
});
