/**
 * docs/protocol.md is the contract controllers rely on: it names every RPC
 * method of protocol/rpc.ts, every public topic of protocol/topics.ts and
 * every VM and job state.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { JOB_STATES, RPC_METHODS, VM_STATES } from '../../protocol/rpc.js';
import { topics } from '../../protocol/topics.js';

const doc = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');

describe('docs/protocol.md', () => {
  it('documents every RPC method', () => {
    for (const m of RPC_METHODS) assert.ok(doc.includes(`\`${m}\``), `${m} is missing`);
  });

  it('documents every public topic', () => {
    const t = topics('P/<host>');
    const publicTopics = [
      t.status,
      t.events,
      t.vmState('<vmId>'),
      t.vmEvents('<vmId>'),
      t.vmTelemetry('<vmId>'),
      t.vmConsoleOut('<vmId>'),
      t.vmConsoleIn('<vmId>'),
      t.jobState('<jobId>'),
      t.jobOutput('<jobId>'),
      t.poolState('<name>'),
      t.volumeState('<volumeId>'),
    ];
    for (const topic of publicTopics)
      assert.ok(doc.includes(`\`${topic}\``), `${topic} is missing`);
  });

  it('names every VM and job state', () => {
    for (const s of [...VM_STATES, ...JOB_STATES])
      assert.ok(doc.includes(`\`${s}\``), `state ${s} is missing`);
  });
});
