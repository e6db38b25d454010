import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { DEFAULT_OUTBOX_LIMITS } from '../../../guest-agent/outbox.js';
import { jobOutput, startHarness } from '../../support/agent-harness.js';

const HIGH = 32 * 1024;

test('the channel drops: output is held back (bounded), telemetry dropped oldest-first, all delivered after hello+ready', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'agent-reconnect-'));
  const fifo = path.join(dir, 'fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const h = await startHarness({
    settings: { telemetryMs: 30 },
    agent: {
      outbox: {
        ...DEFAULT_OUTBOX_LIMITS,
        outputHighBytes: HIGH,
        outputLowBytes: 8 * 1024,
        maxTelemetry: 2,
      },
    },
  });
  try {
    const jobId = 'job-long';
    const r = await h.request('exec', { id: 'e1', jobId, argv: ['cat', fifo] });
    assert.equal(r.ok, true);

    // The host goes away and stays away for a while.
    h.platform.channelAvailable = false;
    const flow = new Promise<void>((resolve) => {
      const off = h.agent.outbox.onFlow((p) => {
        if (p) {
          off();
          resolve();
        }
      });
    });
    h.platform.current?.destroy();

    // 1 MiB through the job while disconnected: far more than the outbox may hold.
    const data = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = 97 + (i % 26);
    const written = writeFile(fifo, data);
    await flow;
    const s = h.agent.outbox.stats();
    assert.ok(
      s.outputBytes >= HIGH && s.outputBytes <= HIGH + 128 * 1024,
      `outbox holds ${s.outputBytes} bytes`,
    );
    assert.equal(h.agent.connected, false);

    // Telemetry keeps being sampled meanwhile; only the newest 2 are kept.
    let samples = 0;
    await new Promise<void>((resolve) => {
      const onRead = (p: string) => {
        if (p === '/proc/stat' && ++samples === 6) {
          h.platform.events.off('read', onRead);
          resolve();
        }
      };
      h.platform.events.on('read', onRead);
    });
    assert.ok(h.agent.outbox.stats().drops.telemetry >= 3);

    // The host is back.
    const since = h.received.length;
    h.platform.channelAvailable = true;
    const hello = await h.waitFor('hello', undefined, { since });
    assert.deepEqual(
      hello.jobs.map((j) => [j.jobId, j.state]),
      [[jobId, 'running']],
    );
    await written;
    const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
    assert.equal(exit.exitCode, 0);

    const after = h.received.slice(since);
    assert.deepEqual(
      after.slice(0, 2).map((m) => m.kind),
      ['hello', 'ready'],
    );
    // Every seq from 0 to the last arrived (some twice: what was in flight
    // when the channel dropped is sent again) and the bytes are intact.
    const seqs = new Set(
      h
        .all('output')
        .filter((o) => o.jobId === jobId)
        .map((o) => o.seq),
    );
    assert.equal(seqs.size, exit.seq);
    assert.ok([...seqs].every((q) => q < exit.seq));
    assert.ok(
      jobOutput(h, jobId).length === data.length && jobOutput(h, jobId) === data.toString(),
    );
    const log = await h.waitFor('log', (l) => /dropped \d+ telemetry/.test(l.message), { since });
    assert.equal(log.level, 'warn');
    assert.equal(h.all('telemetry', since).length >= 1, true);
    assert.equal(h.clientIds.length, 2);
    assert.equal(
      h.received.find((m) => m.invalid),
      undefined,
    );
  } finally {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a host that is not there at start: the agent keeps retrying, then connects', async () => {
  const h = await startHarness({ start: false });
  try {
    h.platform.channelAvailable = false;
    await h.agent.start();
    await new Promise<void>((resolve) =>
      h.platform.events.on('attempt', () => {
        if (h.platform.channelSpecs.length === 3) resolve();
      }),
    );
    assert.equal(h.received.length, 0);
    h.platform.channelAvailable = true;
    await h.waitFor('ready');
    assert.deepEqual(h.received.map((m) => m.kind).slice(0, 2), ['hello', 'ready']);
  } finally {
    await h.close();
  }
});

test("the host's wake for a resumed guest (a CONNACK out of turn): the agent starts a new session at once, with no warning", async () => {
  // A backoff no test waits out: only the immediate retry can reconnect here.
  const h = await startHarness({
    start: false,
    agent: {
      connection: {
        keepaliveS: 30,
        connectTimeoutMs: 5000,
        backoff: { initialMs: 60_000, maxMs: 60_000, factor: 1, jitter: 0 },
      },
    },
  });
  try {
    const channel = once(h.platform.events, 'channel');
    await h.agent.start();
    const [hostSide] = (await channel) as [Duplex];
    await h.waitFor('ready');
    const since = h.received.length;
    const attempt = once(h.platform.events, 'attempt');
    // What host/agent/sessions.ts writes first on a resumed guest's new channel.
    hostSide.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
    await attempt;
    await h.waitFor('ready', undefined, { since });
    assert.deepEqual(
      h.received
        .slice(since)
        .map((m) => m.kind)
        .filter((k) => k === 'hello' || k === 'ready'),
      ['hello', 'ready'],
    );
    assert.equal(h.platform.channelSpecs.length, 2);
    const warned = h.all('log').filter((l) => l.level !== 'debug' && /CONNACK/.test(l.message));
    assert.deepEqual(warned, []);
  } finally {
    await h.close();
  }
});
