/**
 * The whole file path without a VM: the client library (sendFile,
 * receiveFile) → mvirtd's transfers → the agent's file core on a temporary
 * folder, each hop as it is in mvirtd (base64 on the RPC, bytes to the agent,
 * an agent error as AGENT_ERROR with its code). A copy cut by its controller
 * goes on with `resume` from what the guest kept.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { createFiles } from '../../../guest-agent/files.js';
import type { AgentError } from '../../../guest-agent/errors.js';
import { createTransfers } from '../../../host/fs/transfers.js';
import { DEFAULT_TRANSFER_OPTIONS } from '../../../host/fs/files.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { MvirtError } from '../../../protocol/errors.js';
import { FS_CHUNK_BYTES, type FsReadMsg, type FsWriteMsg } from '../../../protocol/fs.js';
import { receiveFile, sendFile, type FsCaller } from '../../../protocol/fs-transfer.js';
import { createFakePlatform } from '../../support/agent-platform.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function pipeline() {
  const agent = createFiles(
    createFakePlatform(() => undefined),
    () => undefined,
  );
  let id = 0;
  const transfers = createTransfers({
    call: async (_vm, kind, body) => {
      const msg = { ...body, id: `r${id++}` };
      try {
        return kind === 'fsWrite'
          ? await agent.write(msg as FsWriteMsg)
          : await agent.read(msg as FsReadMsg);
      } catch (err) {
        // What host/agent/link.ts makes of an error reply.
        const e = err as AgentError;
        throw new MvirtError('AGENT_ERROR', e.message, { details: { code: e.code } });
      }
    },
    options: DEFAULT_TRANSFER_OPTIONS,
  });
  const caller = {
    async call(method: string, p: Record<string, unknown>) {
      if (method === 'fs.write') {
        const data = Buffer.from(p.data as string, 'base64');
        const { vm: _vm, dryRun: _d, ...rest } = p;
        return transfers.write('vm-1', p.seq as number, {
          ...(rest as Omit<FsWriteMsg, 'id' | 'data'>),
          data: new Uint8Array(data),
        });
      }
      const { vm: _vm, ...rest } = p;
      const a = await transfers.read('vm-1', p.seq as number, {
        length: FS_CHUNK_BYTES,
        ...(rest as Omit<FsReadMsg, 'id' | 'length'>),
      });
      return { ...a, data: Buffer.from(a.data).toString('base64') };
    },
  } as FsCaller;
  return { caller, transfers };
}

async function* chunks(data: Buffer, failAt?: number) {
  for (let i = 0; i < data.length; i += 100_000) {
    if (failAt !== undefined && i >= failAt) throw new Error('the controller went away');
    yield data.subarray(i, i + 100_000);
  }
}

test('sendFile and receiveFile through mvirtd’s transfers to the agent core', async () => {
  const dir = await makeTempDir('mvirt-pipe-');
  try {
    const { caller, transfers } = pipeline();
    const data = randomBytes(3 * FS_CHUNK_BYTES + 4321);
    const target = path.join(dir, 'f');
    const seen: number[] = [];
    const end = await sendFile(caller, {
      vm: 'vm-1',
      path: target,
      source: chunks(data),
      mode: 0o600,
      onProgress: (n) => seen.push(n),
    });
    assert.deepEqual(end, { size: data.length, sha256: sha(data) });
    assert.ok(readFileSync(target).equals(data));
    assert.equal(seen.at(-1), data.length);
    const got: Buffer[] = [];
    const back = await receiveFile(caller, {
      vm: 'vm-1',
      path: target,
      sink: (b) => void got.push(b),
    });
    assert.deepEqual(back, end);
    assert.ok(Buffer.concat(got).equals(data));
    assert.equal(transfers.heldBytes(), 0);
    // An empty file goes too.
    await sendFile(caller, {
      vm: 'vm-1',
      path: path.join(dir, 'empty'),
      source: chunks(Buffer.alloc(0)),
    });
    assert.equal(readFileSync(path.join(dir, 'empty')).length, 0);
  } finally {
    await removeDir(dir);
  }
});

test('a copy cut by its controller resumes from what the guest kept', async () => {
  const dir = await makeTempDir('mvirt-pipe-');
  try {
    const { caller } = pipeline();
    const data = randomBytes(6 * FS_CHUNK_BYTES);
    const target = path.join(dir, 'f');
    const transfer = 'transfer-resume-1';
    await assert.rejects(
      sendFile(caller, {
        vm: 'vm-1',
        path: target,
        source: chunks(data, 4 * FS_CHUNK_BYTES),
        resume: { transfer },
      }),
      /the controller went away/,
    );
    assert.equal(existsSync(target), false, 'nothing under the target name');
    let kept = -1;
    const end = await sendFile(caller, {
      vm: 'vm-1',
      path: target,
      source: chunks(data),
      resume: { transfer },
      onProgress: (n) => (kept = kept < 0 ? n : kept),
    });
    assert.ok(kept >= 3 * FS_CHUNK_BYTES, `resumed at ${kept}`);
    assert.deepEqual(end, { size: data.length, sha256: sha(data) });
    assert.ok(readFileSync(target).equals(data));
  } finally {
    await removeDir(dir);
  }
});

test('a missing file and a full window are the named errors', async () => {
  const dir = await makeTempDir('mvirt-pipe-');
  try {
    const { caller } = pipeline();
    await assert.rejects(
      receiveFile(caller, { vm: 'vm-1', path: path.join(dir, 'none'), sink: () => undefined }),
      (e: MvirtError) => e.code === 'FILE_NOT_FOUND',
    );
  } finally {
    await removeDir(dir);
  }
});
