/**
 * Recovery asks the QEMU backend whether a leftover process is its own: a
 * real process that is not this folder's QEMU, or whose start time differs,
 * is never signalled by dispose(); a gone pid is reported gone.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, test } from 'node:test';
import pino from 'pino';
import { procStartTime } from '../../../host/hypervisors/proc.js';
import { createQemuBackend } from '../../../host/hypervisors/qemu/backend.js';
import type { VmRuntime } from '../../../host/hypervisors/types.js';

const log = pino({ level: 'silent' });
const qemu = createQemuBackend({}, log);
const DIR = '/tmp/mvirt-ownership-test/vm/vm-000000000001';

const sleeper = spawn('sleep', ['600'], { stdio: 'ignore' });
const spawned = once(sleeper, 'spawn');
after(() => void sleeper.kill('SIGKILL'));

function runtime(over: Partial<VmRuntime>): VmRuntime {
  return {
    backend: 'qemu',
    pid: sleeper.pid!,
    startTime: procStartTime(sleeper.pid!)!,
    accel: 'tcg',
    sockets: {},
    ...over,
  };
}

test('a live process that is not the QEMU of the folder is not ours, and dispose leaves it', async () => {
  await spawned;
  const rt = runtime({});
  assert.equal(qemu.identify(rt, DIR), 'not-ours');
  await qemu.dispose(rt, DIR, log);
  assert.equal(procStartTime(rt.pid), rt.startTime, 'still running');
  await assert.rejects(qemu.attach(rt, DIR, log), (err: Error & { details?: unknown }) => {
    assert.deepEqual(err.details, { reason: 'not-ours' });
    return true;
  });
});

test('another start time is a reused pid; another backend is not ours; a gone pid is gone', async () => {
  await spawned;
  const rt = runtime({});
  assert.equal(qemu.identify({ ...rt, startTime: rt.startTime + 1 }, DIR), 'pid-reused');
  await qemu.dispose({ ...rt, startTime: rt.startTime + 1 }, DIR, log);
  assert.equal(procStartTime(rt.pid), rt.startTime, 'still running');
  assert.equal(qemu.identify({ ...rt, backend: 'firecracker' }, DIR), 'not-ours');
  const gone = spawn('true');
  await once(gone, 'exit');
  assert.equal(qemu.identify(runtime({ pid: gone.pid!, startTime: 1 }), DIR), 'gone');
});
