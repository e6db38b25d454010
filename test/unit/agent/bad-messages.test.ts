import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { encodeCbor } from '../../../protocol/codec.js';
import { nextId, startHarness, type Harness } from '../../support/agent-harness.js';

let h: Harness;
before(async () => {
  h = await startHarness();
});
after(async () => {
  await h.close();
});

async function stillWorks() {
  const id = nextId('ping');
  const r = await h.request('ping', { id });
  assert.deepEqual(r, {
    id,
    ok: true,
    result: { wallMs: (r.result as { wallMs: number }).wallMs },
  });
  assert.equal(typeof (r.result as { wallMs: unknown }).wallMs, 'number');
}

test('garbage bytes: a log message (no id to reply to), and the agent keeps working', async () => {
  const since = h.received.length;
  await h.sendRaw('exec', Buffer.from([0xff, 0xfe, 0x00, 0x13]));
  const log = await h.waitFor('log', (l) => /BAD_MESSAGE/.test(l.message), { since });
  assert.equal(log.level, 'warn');
  assert.match(log.message, /undecodable exec/);
  await stillWorks();
});

test('unknown kind with an id: UNKNOWN_KIND reply', async () => {
  const r = await h.request('reboot-now' as 'ping', { id: 'u1' });
  assert.equal(r.ok, false);
  assert.equal(r.error?.code, 'UNKNOWN_KIND');
  await stillWorks();
});

test('unknown field: BAD_MESSAGE naming the field; nothing runs', async () => {
  const r = await h.request('exec', { id: 'f1', jobId: 'jx', argv: ['true'], sudo: true });
  assert.equal(r.ok, false);
  assert.equal(r.error?.code, 'BAD_MESSAGE');
  assert.match(r.error?.message ?? '', /sudo/);
  assert.equal(h.all('exit').filter((e) => e.jobId === 'jx').length, 0);
  // The job id was not taken by the rejected request.
  const ok = await h.request('exec', { id: 'f2', jobId: 'jx', argv: ['true'] });
  assert.equal(ok.ok, true);
  assert.equal((await h.waitFor('exit', (e) => e.jobId === 'jx')).exitCode, 0);
});

test('wrong type: BAD_MESSAGE naming the path', async () => {
  const r = await h.request('exec', { id: 'w1', jobId: 'jw', argv: 'ls -l' });
  assert.equal(r.error?.code, 'BAD_MESSAGE');
  assert.match(r.error?.message ?? '', /argv/);
  const p = await h.request('power', { id: 'w2', action: 'explode' });
  assert.equal(p.error?.code, 'BAD_MESSAGE');
  assert.deepEqual(h.platform.powerCalls, []);
  await stillWorks();
});

test('invalid message without an id (stdin) is logged; CBOR that is not a map too', async () => {
  const since = h.received.length;
  await h.send('stdin', { jobId: 'j', data: 'not bytes' });
  await h.sendRaw('ping', encodeCbor([1, 2, 3]));
  await h.waitFor('log', (l) => /invalid stdin/.test(l.message), { since });
  await h.waitFor('log', (l) => /invalid ping/.test(l.message), { since });
  const unknownJob = await h.request('signal', { id: 's1', jobId: 'ghost', signal: 'SIGKILL' });
  assert.equal(unknownJob.error?.code, 'JOB_NOT_FOUND');
  await stillWorks();
  assert.equal(
    h.received.find((r) => r.invalid),
    undefined,
  );
});
