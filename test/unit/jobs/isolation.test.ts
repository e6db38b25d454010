/**
 * A guest speaks only for its own jobs: output, exit records and a hello that
 * name another VM's job, sent through one VM's agent channel, change nothing
 * about that job.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { encodeCbor } from '../../../protocol/codec.js';
import { AGENT_PROTOCOL_VERSION } from '../../../protocol/agent.js';
import type { VmRecord } from '../../../protocol/rpc.js';
import {
  cleanupAll,
  exitRecord,
  gated,
  open,
  result,
  startJobDaemon,
  TERMINAL,
  text,
  type JobDaemon,
} from '../../support/jobs.js';

let j: JobDaemon;
let a: VmRecord;
let b: VmRecord;
before(async () => {
  j = await startJobDaemon();
  a = await j.serviceVm('vm-a');
  b = await j.serviceVm('vm-b');
});
after(cleanupAll);

test("a guest cannot affect another VM's job", async () => {
  const go = path.join(j.tmp, 'b-go');
  const job = await j.run({ vm: 'vm-b', argv: gated(go) });
  const goA = path.join(j.tmp, 'a-go');
  const jobA = await j.run({ vm: 'vm-a', argv: gated(goA) });
  for (const x of [job, jobA]) {
    await j.rec.until(
      () => (text(j.rec.outputs(x.jobId)) === 'start\n' ? true : undefined),
      `${x.jobId} started`,
    );
  }

  // VM A's agent channel claims B's job: its next chunk, its exit, and a hello listing it.
  const guestA = j.hv.guests.get(a.id)!;
  assert.ok(guestA && !guestA.dead);
  guestA.publishUp(
    'output',
    encodeCbor({ jobId: job.jobId, seq: 1, stream: 'stdout', data: Buffer.from('FORGED\n') }),
  );
  guestA.publishUp('exit', encodeCbor(exitRecord(job.jobId, 2)));
  guestA.publishUp(
    'hello',
    encodeCbor({
      protocol: AGENT_PROTOCOL_VERSION,
      agentVersion: 'evil',
      kernel: 'evil',
      hostname: 'evil',
      pid: 1,
      boot: { initS: 0, agentStartS: 0, connectedS: 0 },
      // A's own job as it is, and B's job as finished.
      jobs: [
        { jobId: jobA.jobId, state: 'running', lastSeq: 0 },
        { jobId: job.jobId, state: 'exited', lastSeq: 5 },
      ],
    }),
  );
  // Control: the same channel does speak for A's own job. Sent last on the
  // same channel, so once it is seen the forgeries were handled too.
  guestA.publishUp(
    'output',
    encodeCbor({ jobId: jobA.jobId, seq: 1, stream: 'stdout', data: Buffer.from('own\n') }),
  );
  await j.rec.until(
    () => (text(j.rec.outputs(jobA.jobId)) === 'start\nown\n' ? true : undefined),
    "A's own chunk accepted",
  );

  assert.deepEqual(
    j.rec.jobStates(job.jobId).map((r) => r.state),
    ['queued', 'running'],
    "B's job is still running",
  );
  assert.equal(text(j.rec.outputs(job.jobId)), 'start\n', 'no forged output published');
  assert.equal(result(await j.c.call('vm.get', { vm: 'vm-b' })).state, 'busy');

  await open(go);
  const done = await j.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'succeeded');
  assert.equal(done.vm, b.id);
  const logs = result(await j.c.call('job.logs', { jobId: job.jobId }));
  assert.equal(logs.chunks.map((c) => c.data).join(''), 'start\nend\n');
  await open(goA);
  assert.equal((await j.rec.job(jobA.jobId, TERMINAL)).state, 'succeeded');
});
