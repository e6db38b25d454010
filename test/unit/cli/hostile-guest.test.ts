/**
 * A hostile guest against the real mvirtd and its broker (issue 12 item 4):
 * a fake VM runs the real agent core, then speaks for itself on its own
 * channel as a job that took it over would. Escape sequences in what it
 * chooses arrive inert (or refused) in `mvirt vm get`, `mvirt job get`,
 * `mvirt events`; out-of-range figures arrive clamped in `mvirt top --json`
 * and `/metrics` (never +Inf); absurd sequence numbers and second hellos are
 * refused and counted in one aggregated event.
 */
/* eslint-disable no-control-regex -- these tests look for control characters */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { GUEST_LOG_FILE } from '../../../host/agent/guest-log.js';
import { runCli } from '../../../host/cli/run.js';
import type { TopFrame } from '../../../host/cli/top.js';
import { AGENT_PROTOCOL_VERSION } from '../../../protocol/agent.js';
import { encodeCbor } from '../../../protocol/codec.js';
import type { VmTelemetry } from '../../../protocol/metrics.js';
import type { EventRecord, VmRecord } from '../../../protocol/rpc.js';
import { memoryIo } from '../../support/cli-io.js';
import { HOST_ID } from '../../../harness/daemon.js';
import type { RealGuest } from '../../../harness/fake-vms.js';
import {
  cleanupAll,
  errorOf,
  exitRecord,
  result,
  startJobDaemon,
  until,
  type JobDaemon,
} from '../../support/jobs.js';
import { PTY_HELPER } from '../../../images/helpers.js';
import { builtHelper } from '../../../harness/vsock-helper.js';
import { parsePromText } from '../../support/prom-text.js';
import { adminBasic } from '../../../harness/test-admin.js';

/** What a terminal acts on (C0 but newline, DEL, C1, bidi): none may reach the screen. */
const ACTIVE =
  /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]/;
const EVIL =
  '\x1b[2J\x1b]0;owned\x07\x1b]8;;https://evil.example/\x1b\\link\x1b]8;;\x1b\\\u202eexe.txt\u009b31m';
/** EVIL as the CLI shows it. */
const SHOWN =
  '\\x1b[2J\\x1b]0;owned\\x07\\x1b]8;;https://evil.example/\\x1b\\link\\x1b]8;;\\x1b\\\\u202eexe.txt\\x9b31m';

let j: JobDaemon;
let vm: VmRecord;
let guest: RealGuest;
before(async () => {
  j = await startJobDaemon();
  vm = await j.serviceVm('evil');
  guest = j.hv.guests.get(vm.id)!;
});
after(cleanupAll);

const io = () => memoryIo({ env: { MVIRT_BROKER: j.d.url, MVIRT_HOST: HOST_ID } });
async function cli(...argv: string[]): Promise<string> {
  const m = io();
  const code = await runCli(argv, m);
  assert.equal(code, 0, m.errText());
  assert.doesNotMatch(m.out(), ACTIVE, `mvirt ${argv.join(' ')} prints nothing active`);
  return m.out();
}
const up = (kind: string, body: unknown): void =>
  guest.publishUp(kind, Buffer.from(encodeCbor(body)));

const hello = {
  protocol: AGENT_PROTOCOL_VERSION,
  agentVersion: '6.6.6',
  kernel: '6.1.0',
  hostname: 'evil',
  pid: 1,
  boot: { initS: 0.1, agentStartS: 0.2, connectedS: 0.3 },
  jobs: [],
};
const sample = {
  at: 1,
  cpuPercent: 102_400,
  memUsedMiB: 1_000_000,
  memTotalMiB: 1_000_000,
  load1: 1,
  load5: 1,
  load15: 1,
  uptimeS: 10,
  procs: 4242,
  disk: [{ mount: '/', totalBytes: 1000, usedBytes: 10_000 }],
  net: [{ iface: 'eth0', rxBytes: 1, txBytes: 1, rxPackets: 1, txPackets: 1 }],
};

/**
 * Publish the hostile messages, then a marker sample; the channel is ordered,
 * so once the marker is on `vm/<id>/telemetry` the host has handled them all.
 */
async function speak(send: () => void, marker: Partial<typeof sample> = {}): Promise<VmTelemetry> {
  const w = await j.c.watch(`${j.d.root}/vm/${vm.id}/telemetry`, (_t, p) => {
    const t = JSON.parse(p.toString()) as VmTelemetry;
    return t.procs === (marker.procs ?? sample.procs) && t.uptimeS === (marker.uptimeS ?? 77);
  });
  send();
  up('telemetry', { ...sample, uptimeS: 77, ...marker });
  return JSON.parse((await w.message).toString()) as VmTelemetry;
}

test('guest strings: refused in names, inert in free text, on every CLI view', async () => {
  const job = await j.run({ vm: 'evil', argv: ['sleep', '60'] });
  await j.rec.job(job.jobId, ['running']);
  await speak(() => {
    up('hello', { ...hello, kernel: EVIL }); // refused by the schema
    up('hello', hello); // a second hello on the session: refused
    up('telemetry', { ...sample, procs: 1, net: [{ ...sample.net[0], iface: EVIL.slice(0, 30) }] });
    up('log', { level: 'error', message: EVIL });
    up('exit', {
      jobId: job.jobId,
      seq: 0,
      exitCode: null,
      signal: null,
      oomKilled: false,
      timedOut: false,
      error: EVIL,
      startedAt: 1,
      finishedAt: 2,
    });
  });
  const done = await j.rec.job(job.jobId, ['failed']);
  assert.equal(done.reason, `the command could not be started: ${SHOWN}`, 'stored inert');

  const get = await cli('vm', 'get', 'evil');
  assert.match(get, /Agent:\s+0\.1\.0\n/, 'the second hello changed nothing');
  const jobView = await cli('job', 'get', job.jobId);
  assert.ok(jobView.includes(SHOWN), jobView);
  const evs = await cli('events', '--object', job.jobId);
  assert.ok(evs.includes(SHOWN), evs);
  const asJson = await cli('events', '--object', job.jobId, '--json');
  assert.ok(
    (JSON.parse(asJson) as { events: EventRecord[] }).events.some((e) => e.message.includes(SHOWN)),
  );

  // The refused hello is one count in one event, not an event each.
  j.d.daemon.events.guest.flush();
  const counts = result(
    await j.c.call('events.query', { objectId: vm.id, level: 'warn' }),
  ).events.map((e) => e.message);
  assert.ok(
    counts.some((m) => /^1 hellos refused \(one per session\) in the last/.test(m)),
    JSON.stringify(counts),
  );
  for (const what of ['invalid hello messages', 'invalid telemetry messages'])
    assert.ok(
      counts.some((m) => m.startsWith(`1 ${what} refused in the last`)),
      `${what} in ${JSON.stringify(counts)}`,
    );
});

test('guest figures: clamped to the VM in top and /metrics; refused beyond any VM; never +Inf', async () => {
  const t = await speak(() => {
    up('telemetry', { ...sample, procs: 5, memUsedMiB: Infinity });
    up('telemetry', { ...sample, procs: 6, cpuPercent: 1e9 });
    up('telemetry', { ...sample, procs: 7, load1: -1 });
  });
  assert.equal(t.cpuPercent, 100 * vm.vcpus, 'CPU: at most 100 % per vCPU');
  assert.equal(t.memTotalMiB, vm.memoryMiB, 'memory: at most the VM size');
  assert.equal(t.memUsedMiB, vm.memoryMiB);
  assert.equal(t.diskUsedBytes, 1000, 'used: at most the size');

  // top hears telemetry live: a sample after its first frame brings a frame that
  // carries it. Other changes (the host status) may draw frames in between, so
  // the test waits for the frame with the sample rather than counting frames.
  const m = io();
  const top = runCli(['top', '--json', '--interval', '0'], m);
  await m.waitOut('\n');
  const rowOf = (line: string): TopFrame['vms'][number] | undefined =>
    (JSON.parse(line) as TopFrame).vms.find((v) => v.name === 'evil' && v.cpuPercent !== undefined);
  const sampled = m.waitOut((out) =>
    out
      .trim()
      .split('\n')
      .some((l) => rowOf(l)),
  );
  await speak(() => undefined);
  await sampled;
  m.signal();
  assert.equal(await top, 0, m.errText());
  assert.doesNotMatch(m.out(), ACTIVE);
  const rows = m.out().trim().split('\n').map(rowOf);
  assert.equal(rows[0], undefined, 'telemetry is not retained: the first frame has none');
  const row = rows.find((r) => r)!;
  assert.equal(row.cpuPercent, 100 * vm.vcpus);
  assert.equal(row.memUsedMiB, vm.memoryMiB);

  const text = await (
    await fetch(`${j.d.daemon.http!.url}/metrics`, { headers: { authorization: adminBasic() } })
  ).text();
  const fams = parsePromText(text);
  const of = (name: string): number =>
    fams.get(name)!.samples.find((s) => s.labels.name === 'evil')!.value;
  assert.equal(of('mvirt_vm_cpu_percent'), 100 * vm.vcpus);
  assert.equal(of('mvirt_vm_memory_used_bytes'), vm.memoryMiB * 1024 * 1024);
  // mvirt's own series (Node's process metrics may be NaN before their first sample).
  for (const f of fams.values())
    if (f.name.startsWith('mvirt_'))
      for (const s of f.samples) assert.ok(Number.isFinite(s.value), `${s.name} ${s.value}`);
  // The refused samples never became the latest (procs 5, 6, 7).
  assert.equal(of('mvirt_vm_processes'), sample.procs);
});

test('job output: sequence numbers beyond what the job could have produced are refused', async () => {
  const job = await j.run({ vm: 'evil', argv: ['sleep', '60'] });
  await j.rec.job(job.jobId, ['running']);
  await speak(
    () => {
      for (const seq of [2 ** 52, 1e12])
        up('output', { jobId: job.jobId, seq, stream: 'stdout', data: Buffer.from('x') });
      up('exit', exitRecord(job.jobId, 2 ** 52));
    },
    { procs: 4343 },
  );
  const rec = result(await j.c.call('job.get', { jobId: job.jobId }));
  assert.equal(rec.state, 'running', 'the absurd exit record was refused');
  assert.equal(rec.nextSeq, 0);
  assert.deepEqual(rec.dropped, { chunks: 0, bytes: 0 });
  result(await j.c.call('job.cancel', { jobId: job.jobId }));
  j.d.daemon.events.guest.flush();
  const counts = result(
    await j.c.call('events.query', { objectId: vm.id, level: 'warn' }),
  ).events.map((e) => e.message);
  assert.ok(
    counts.some((m) => m.startsWith('2 output records refused')),
    JSON.stringify(counts),
  );
  assert.ok(
    counts.some((m) => m.startsWith('1 exit records refused')),
    JSON.stringify(counts),
  );
});

test('tty: a guest speaks for no job but its own, answers no resize it was not asked, and a job without a terminal is never resized', async () => {
  await builtHelper(PTY_HELPER); // the fake guests run tty jobs under the real mvirt-pty
  await j.serviceVm('bystander');
  const shell = await j.run({ vm: 'bystander', argv: ['sh'], tty: true, stdinOpen: true });
  await j.rec.job(shell.jobId, ['running']);
  const plain = await j.run({ vm: 'evil', argv: ['sleep', '60'] });
  await j.rec.job(plain.jobId, ['running']);
  const ghost = 'job-0000000000ff';
  await speak(
    () => {
      // Another VM's tty job: its output and its end are not this guest's to report.
      up('output', { jobId: shell.jobId, seq: 0, stream: 'stdout', data: Buffer.from(EVIL) });
      up('exit', exitRecord(shell.jobId));
      // A job that does not exist.
      up('output', { jobId: ghost, seq: 0, stream: 'stdout', data: Buffer.from('x') });
      up('exit', exitRecord(ghost));
      // resize goes host → guest only; a reply to no request it was sent.
      up('resize', { jobId: shell.jobId, cols: 1, rows: 1 });
      up('reply', { id: 'r-1', ok: true, result: { running: true } });
    },
    { procs: 4444 },
  );
  assert.equal(errorOf(await j.c.call('job.get', { jobId: ghost })).code, 'JOB_NOT_FOUND');
  const still = result(await j.c.call('job.get', { jobId: shell.jobId }));
  assert.equal(still.state, 'running', 'the forged exit was refused');
  const logs = result(await j.c.call('job.logs', { jobId: shell.jobId }));
  assert.ok(
    logs.chunks.every((ch) => !ch.data.includes('owned')),
    'the forged output is not in the job',
  );
  // The shell's own guest still sizes its terminal; the plain job has none to size.
  assert.deepEqual(
    result(await j.c.call('job.resize', { jobId: shell.jobId, cols: 90, rows: 30 })),
    { delivered: true },
  );
  const noTty = errorOf(await j.c.call('job.resize', { jobId: plain.jobId, cols: 90, rows: 30 }));
  assert.equal(noTty.code, 'INVALID_PARAMS');
  assert.match(noTty.message, /runs without a terminal/);
  for (const id of [shell.jobId, plain.jobId]) result(await j.c.call('job.cancel', { jobId: id }));
});

test('guest log lines: the VM’s own bounded agent.log, at most info, inert; a flood is cut and counted', async () => {
  const file = path.join(j.dataDir, 'vm', vm.id, GUEST_LOG_FILE);
  await speak(
    () => {
      up('log', { level: 'error', message: `first ${EVIL}` });
      for (let i = 0; i < 2000; i++) up('log', { level: 'info', message: `flood ${i}` });
    },
    { procs: 4444 },
  );
  const lines = () =>
    existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
  // Every line was taken or dropped once the marker is through: the count says how many went.
  j.d.daemon.events.guest.flush();
  const counts = result(
    await j.c.call('events.query', { objectId: vm.id, level: 'warn' }),
  ).events.map((e) => e.message);
  const dropped = counts.find((m) => m.includes('log lines dropped (rate limit)'));
  assert.ok(dropped, JSON.stringify(counts));
  const count = Number(dropped.split(' ')[0]!.replace(/,/g, ''));
  const flood = () => lines().filter((l) => l.includes('flood ')).length;
  await until(() => flood() === 2000 - count, `agent.log has the ${2000 - count} kept lines`);
  // The burst (200) and what the rate refilled meanwhile; the rest dropped before any queue.
  assert.ok(count > 1000, `${count} of 2000 flood lines dropped`);
  const text = readFileSync(file, 'utf8');
  assert.doesNotMatch(text, ACTIVE);
  assert.match(text, /Z INFO \(guest said error\) first \\x1b\[2J/, 'at most info; inert');
});
