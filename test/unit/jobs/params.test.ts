/** Refused requests get typed errors, and a refused job.run leaves nothing behind. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { cleanupAll, errorOf, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

let j: JobDaemon;
before(async () => {
  j = await startJobDaemon();
  await j.serviceVm('svc');
  result(await j.c.call('vm.create', { name: 'off' }));
});
after(cleanupAll);

const code = async (method: string, params: unknown): Promise<string> =>
  errorOf(await j.c.send(method, params)).code;

const UNKNOWN_JOB = 'job-0123456789abcdef';

test('job.run: unknown field, bad argv, bad env, two targets → INVALID_PARAMS', async () => {
  assert.equal(await code('job.run', { vm: 'svc', argv: ['true'], bogus: 1 }), 'INVALID_PARAMS');
  assert.equal(await code('job.run', { vm: 'svc', argv: [] }), 'INVALID_PARAMS');
  assert.equal(await code('job.run', { vm: 'svc', argv: 'true' }), 'INVALID_PARAMS');
  assert.equal(await code('job.run', { vm: 'svc' }), 'INVALID_PARAMS');
  assert.equal(
    await code('job.run', { vm: 'svc', argv: ['true'], env: { 'BAD-KEY': 'x' } }),
    'INVALID_PARAMS',
  );
  assert.equal(
    await code('job.run', { vm: 'svc', argv: ['true'], timeoutMs: -1 }),
    'INVALID_PARAMS',
  );
  const two = errorOf(await j.c.call('job.run', { vm: 'svc', image: 'default', argv: ['true'] }));
  assert.equal(two.code, 'INVALID_PARAMS');
  assert.match(two.message, /at most one of vm, image and pool/);
  assert.equal(await code('job.run', { vm: 'svc', pool: 'p', argv: ['true'] }), 'INVALID_PARAMS');
});

test('job.run on a missing target: VM_NOT_FOUND, POOL_NOT_FOUND, VM_BAD_STATE', async () => {
  assert.equal(await code('job.run', { vm: 'nope', argv: ['true'] }), 'VM_NOT_FOUND');
  assert.equal(await code('job.run', { pool: 'nope', argv: ['true'] }), 'POOL_NOT_FOUND');
  const off = errorOf(await j.c.call('job.run', { vm: 'off', argv: ['true'] }));
  assert.equal(off.code, 'VM_BAD_STATE');
  assert.match(off.message, /stopped/);
});

test('no job was recorded for any refused job.run', async () => {
  const list = result(await j.c.call('job.list'));
  assert.deepEqual(list.jobs, []);
});

test('bad job ids are INVALID_PARAMS; unknown ones JOB_NOT_FOUND', async () => {
  for (const m of ['job.get', 'job.cancel', 'job.logs']) {
    assert.equal(await code(m, { jobId: 'nope' }), 'INVALID_PARAMS', m);
    assert.equal(await code(m, { jobId: 'job-XYZ' }), 'INVALID_PARAMS', m);
    assert.equal(await code(m, {}), 'INVALID_PARAMS', m);
    assert.equal(await code(m, { jobId: UNKNOWN_JOB }), 'JOB_NOT_FOUND', m);
  }
  assert.equal(await code('job.get', { jobId: UNKNOWN_JOB, extra: true }), 'INVALID_PARAMS');
  assert.equal(await code('job.logs', { jobId: UNKNOWN_JOB, maxBytes: 0 }), 'INVALID_PARAMS');
  assert.equal(await code('job.logs', { jobId: UNKNOWN_JOB, fromSeq: -1 }), 'INVALID_PARAMS');
  assert.equal(await code('job.list', { state: 'bogus' }), 'INVALID_PARAMS');
});

test('pools: unknown → POOL_NOT_FOUND; bad definitions → INVALID_PARAMS', async () => {
  assert.equal(await code('pool.get', { name: 'nope' }), 'POOL_NOT_FOUND');
  assert.equal(await code('pool.delete', { name: 'nope' }), 'POOL_NOT_FOUND');
  assert.equal(await code('pool.set', { name: 'p', min: 2, max: 1 }), 'INVALID_PARAMS');
  assert.equal(await code('pool.set', { name: 'p', min: -1 }), 'INVALID_PARAMS');
  assert.equal(await code('pool.set', { name: 'p', min: 0, bogus: 1 }), 'INVALID_PARAMS');
  assert.equal(await code('pool.set', { name: 'bad name', min: 0 }), 'INVALID_PARAMS');
  // Like vm.create: a pool of an image that does not exist is refused, not retried forever.
  assert.equal(
    await code('pool.set', { name: 'p', image: 'no-such-image', min: 1 }),
    'IMAGE_NOT_FOUND',
  );
  const list = result(await j.c.call('pool.list'));
  assert.deepEqual(list.pools, []);
});
