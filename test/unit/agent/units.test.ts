import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBackoff } from '../../../guest-agent/backoff.js';
import { createOutbox, DEFAULT_OUTBOX_LIMITS, type Entry } from '../../../guest-agent/outbox.js';
import { createOutputSink, type Chunk } from '../../../guest-agent/output.js';
import { parseCmdline, resolveSettings } from '../../../guest-agent/settings.js';

test('settings come from the kernel command line, env overrides them', () => {
  const cl = 'console=ttyS0 mvirt.vm=vm-1 mvirt.root=mvirt/host1 mvirt.telemetry_ms=2000 quiet';
  const s = resolveSettings(cl, {});
  assert.equal(s.vmId, 'vm-1');
  assert.equal(s.root, 'mvirt/host1');
  assert.equal(s.telemetryMs, 2000);
  assert.deepEqual(s.channel, {
    kind: 'virtio-serial',
    portName: 'mvirt.agent',
    device: undefined,
  });
  assert.equal(s.tokenPath, '/run/mvirt/token');
  const t = resolveSettings(`${cl} mvirt.channel=tcp mvirt.addr=10.0.2.2`, { MVIRT_VM: 'vm-2' });
  assert.equal(t.vmId, 'vm-2');
  assert.deepEqual(t.channel, { kind: 'tcp', host: '10.0.2.2', port: 1883 });
  assert.deepEqual(
    resolveSettings(cl, { MVIRT_CHANNEL: 'tcp', MVIRT_ADDR: '[::1]:1999' }).channel,
    { kind: 'tcp', host: '::1', port: 1999 },
  );
  assert.equal(resolveSettings(cl, { MVIRT_CHANNEL: 'vsock' }).channel.kind, 'vsock');
  assert.equal(parseCmdline('a=1 b="x y" a=2').get('a'), '2');
});

test('bad settings name the key to fix', () => {
  const base = 'mvirt.vm=vm-1 mvirt.root=mvirt/h';
  assert.throws(() => resolveSettings('mvirt.root=mvirt/h', {}), /mvirt\.vm/);
  assert.throws(() => resolveSettings('mvirt.vm=vm-1', {}), /mvirt\.root/);
  assert.throws(() => resolveSettings('mvirt.vm=a/b mvirt.root=mvirt/h', {}), /mvirt\.vm=a\/b/);
  assert.throws(() => resolveSettings(`${base} mvirt.channel=pigeon`, {}), /mvirt\.channel/);
  assert.throws(() => resolveSettings(`${base} mvirt.channel=tcp`, {}), /mvirt\.addr/);
  assert.throws(() => resolveSettings(`${base} mvirt.telemetry_ms=fast`, {}), /telemetry_ms/);
  assert.throws(() => resolveSettings('mvirt.vm=v mvirt.root=mvirt/#', {}), /mvirt\.root/);
});

test('backoff doubles up to its cap and resets', () => {
  const b = createBackoff({ initialMs: 10, maxMs: 50, factor: 2, jitter: 0 });
  assert.deepEqual([b.next(), b.next(), b.next(), b.next()], [10, 20, 40, 50]);
  b.reset();
  assert.equal(b.next(), 10);
});

const buf = (n: number) => Buffer.alloc(n);

test('outbox: telemetry and logs dropped oldest-first beyond their caps; output never', () => {
  const o = createOutbox({ ...DEFAULT_OUTBOX_LIMITS, maxTelemetry: 2, maxLogs: 1 });
  for (let i = 0; i < 5; i++) o.push('telemetry', `t/${i}`, buf(1));
  o.push('log', 'l/0', buf(1));
  o.push('log', 'l/1', buf(1));
  for (let i = 0; i < 3; i++) o.push('output', `o/${i}`, buf(1));
  const sent: Entry[] = [];
  o.attach((e, done) => {
    sent.push(e);
    done();
  });
  assert.deepEqual(
    sent.map((e) => e.topic),
    ['t/3', 't/4', 'l/1', 'o/0', 'o/1', 'o/2'],
  );
  assert.deepEqual(o.takeDrops(), { telemetry: 3, log: 1, failed: 0 });
  assert.deepEqual(o.takeDrops(), { telemetry: 0, log: 0, failed: 0 });
});

test('outbox: output above the high-water mark pauses, below the low one resumes', () => {
  const o = createOutbox({ ...DEFAULT_OUTBOX_LIMITS, outputHighBytes: 100, outputLowBytes: 30 });
  const flow: boolean[] = [];
  o.onFlow((p) => flow.push(p));
  o.push('output', 'a', buf(60));
  assert.equal(o.outputPaused, false);
  o.push('output', 'b', buf(60));
  assert.equal(o.outputPaused, true);
  const acks: Array<() => void> = [];
  o.attach((_e, done) => acks.push(() => done()));
  acks[0]?.(); // 60 left: still above 30
  assert.deepEqual(flow, [true]);
  acks[1]?.();
  assert.deepEqual(flow, [true, false]);
  assert.equal(o.stats().outputBytes, 0);
});

test('outbox: what was in flight when the connection dropped is resent first, in order', () => {
  const o = createOutbox({ ...DEFAULT_OUTBOX_LIMITS, window: 2 });
  for (const t of ['a', 'b', 'c', 'd']) o.push('reply', t, buf(1));
  const first: Array<{ e: Entry; done: (err?: Error) => void }> = [];
  o.attach((e, done) => first.push({ e, done }));
  assert.deepEqual(
    first.map((x) => x.e.topic),
    ['a', 'b'],
  );
  first[0]?.done(); // a acknowledged → c goes out
  o.detach();
  first[1]?.done(new Error('Connection closed')); // a stale callback changes nothing
  const second: string[] = [];
  o.attach((e, done) => {
    second.push(e.topic);
    done();
  });
  assert.deepEqual(second, ['b', 'c', 'd']);
  assert.deepEqual(o.stats(), {
    pending: 0,
    inflight: 0,
    outputBytes: 0,
    drops: { telemetry: 0, log: 0, failed: 0 },
  });
});

test('output sink: bounded chunks, one seq across streams, coalescing, replay ring', async () => {
  const got: Chunk[] = [];
  const s = createOutputSink({ chunkBytes: 4, coalesceMs: 1000, replayBytes: 6 }, (c) =>
    got.push(c),
  );
  s.write('stdout', Buffer.from('ab'));
  s.write('stdout', Buffer.from('c'));
  assert.equal(got.length, 0); // coalescing
  s.write('stderr', Buffer.from('X')); // switching streams flushes stdout first
  s.write('stdout', Buffer.from('0123456789'));
  s.flush();
  assert.deepEqual(
    got.map((c) => [c.seq, c.stream, c.data.toString()]),
    [
      [0, 'stdout', 'abc'],
      [1, 'stderr', 'X'],
      [2, 'stdout', '0123'],
      [3, 'stdout', '4567'],
      [4, 'stdout', '89'],
    ],
  );
  assert.equal(s.nextSeq, 5);
  assert.deepEqual(
    s.replay(0).map((c) => c.seq),
    [3, 4],
  ); // only 6 bytes kept
});
