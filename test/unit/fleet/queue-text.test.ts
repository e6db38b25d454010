/** `mvirt hosts --queue`'s table and the `--label` arguments of the fleet commands (host/cli/hosts.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseLabels, queueText } from '../../../host/cli/hosts.js';
import { runCli } from '../../../host/cli/run.js';
import { memoryIo } from '../../support/cli-io.js';

const now = Date.parse('2026-12-07T12:00:00.000Z');

test('the queue table: request, method, requester, needs, waiting since, gives up', () => {
  const text = queueText(
    [
      {
        id: 'f-1',
        method: 'job.run',
        clientId: 'alice',
        params: { argv: ['true'], pool: 'p' },
        need: { host: 'h2', labels: { gpu: 'true' } },
        claimTo: 'mvirt/_clients/alice/replies/fleet/claim',
        at: '2026-12-07T11:59:30.000Z',
        expiresAt: '2026-12-07T12:10:00.000Z',
      },
      {
        id: 'f-2',
        method: 'vm.create',
        clientId: 'bob',
        params: { name: 'web', vcpus: 2, memoryMiB: 512, image: 'big' },
        claimTo: 'mvirt/_clients/bob/replies/fleet/claim',
        at: '2026-12-07T11:59:59.000Z',
        expiresAt: '2026-12-07T12:01:00.000Z',
      },
    ],
    now,
  );
  const lines = text.trim().split('\n');
  assert.match(lines[0]!, /^REQUEST\s+METHOD\s+BY\s+NEEDS\s+WAITING\s+GIVES UP$/);
  assert.match(
    lines[1]!,
    /^f-1\s+job\.run\s+alice\s+host=h2, gpu=true, - vCPUs, - MiB, pool p\s+30s ago/,
  );
  assert.match(lines[2]!, /^f-2\s+vm\.create\s+bob\s+2 vCPUs, 512 MiB, image big\s+just now/);
  assert.equal(queueText([], now), 'the fleet queue is empty\n');
});

test('--label K=V: parsed, and a malformed one is a usage error', async () => {
  assert.deepEqual(parseLabels(['gpu=true', 'zone=a=b'], 'run'), { gpu: 'true', zone: 'a=b' });
  assert.throws(() => parseLabels(['gpu'], 'run'), /--label expects K=V, got "gpu"/);
  const m = memoryIo({ env: {} });
  assert.equal(await runCli(['run', '--queue-timeout', '5', '--', 'true'], m), 2);
  assert.match(m.errText(), /--queue-timeout is the wait in the fleet queue: use it with --fleet/);
  const v = memoryIo({ env: {} });
  assert.equal(await runCli(['vm', 'create', 'x', '--label', 'gpu=true'], v), 2);
  assert.match(v.errText(), /--label chooses a host of the fleet: use it with --fleet/);
});
