/**
 * `mvirt top` in-process against mvirtd whose fake VMs run the real agent
 * core: frames come from the topics (VM state, telemetry, status), a VM's
 * figures appear once its telemetry does, state changes show in the next
 * frame, -n stops after N frames, --json gives one frame per line.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { runCli } from '../../../host/cli/run.js';
import { renderTop, type TopFrame } from '../../../host/cli/top.js';
import { memoryIo } from '../../support/cli-io.js';
import { HOST_ID } from '../../../harness/daemon.js';
import { cleanupAll, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

let j: JobDaemon;
before(async () => {
  j = await startJobDaemon({
    args: ['--telemetry-interval-ms', '200', '--status-interval-ms', '200'],
  });
  await j.serviceVm('top-a');
  await j.serviceVm('top-b');
  result(await j.c.call('vm.create', { name: 'top-idle' }));
});
after(cleanupAll);

const io = () => memoryIo({ env: { MVIRT_BROKER: j.d.url, MVIRT_HOST: HOST_ID } });

const framesOf = (out: string): TopFrame[] =>
  out
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as TopFrame);
const figured = (f: TopFrame): string[] =>
  f.vms
    .filter((v) => v.memUsedMiB !== undefined)
    .map((v) => v.name)
    .sort();

test('--json frames: every VM with its state; running VMs get CPU and memory from telemetry', async () => {
  const m = io();
  const running = runCli(['top', '--json', '--interval', '0'], m);
  // Telemetry comes on its own interval: wait for a frame with both running
  // VMs' figures rather than hoping a fixed number of frames holds one.
  await m.waitOut((out) => {
    if (!out.endsWith('\n')) return false;
    const fs = framesOf(out);
    return fs.some((f) => figured(f).length >= 2) && fs.some((f) => f.host?.figures !== undefined);
  });
  m.signal('SIGINT');
  assert.equal(await running, 0, m.errText());
  const frames = framesOf(m.out());
  assert.deepEqual(
    frames[0]!.vms.map((v) => [v.name, v.state]).sort(),
    [
      ['top-a', 'ready'],
      ['top-b', 'ready'],
      ['top-idle', 'stopped'],
    ],
    'the first frame has every VM (vm.list), before any telemetry',
  );
  const last = frames.find((f) => figured(f).length >= 2)!;
  assert.deepEqual(figured(last), ['top-a', 'top-b'], 'telemetry of the running VMs only');
  for (const v of last.vms.filter((x) => x.cpuPercent !== undefined)) {
    assert.ok(v.cpuPercent! >= 0 && v.memUsedMiB! > 0 && v.uptimeS! > 0);
  }
  assert.ok(
    frames.some((f) => f.host?.figures !== undefined),
    'host figures from status',
  );
});

test('-n stops after N frames', async () => {
  const m = io();
  assert.equal(await runCli(['top', '--json', '-n', '3', '--interval', '0'], m), 0, m.errText());
  assert.equal(framesOf(m.out()).length, 3);
});

test('text frames follow state changes; Ctrl-C ends the view', async () => {
  const m = io();
  const running = runCli(['top', '--interval', '0', '--sort', 'name'], m);
  await m.waitOut('top-idle');
  await m.waitOut('CPU%');
  result(await j.c.call('vm.start', { vm: 'top-idle', wait: true }));
  // A frame drawn after the start shows top-idle ready.
  await m.waitOut('VMs: 3 (3 ready)');
  m.signal('SIGINT');
  assert.equal(await running, 0);
  const frames = m.out().split('\nmvirt top — ');
  assert.ok(frames.length >= 2, 'frames follow each other when not a terminal');
  assert.ok(!m.out().includes('\x1b['), 'no terminal control codes when piped');
});

test('renderTop: aligned columns, dashes for a VM without figures, rates per second', () => {
  const text = renderTop({
    at: '2026-01-01T12:00:00.000Z',
    host: null,
    vms: [
      {
        id: 'vm-1',
        name: 'a',
        state: 'ready',
        vcpus: 1,
        memoryMiB: 256,
        cpuPercent: 12.4,
        memUsedMiB: 50,
        load1: 0.5,
        uptimeS: 90,
        rxPerS: 2048,
        txPerS: 10,
      },
      { id: 'vm-2', name: 'bb', state: 'stopped', vcpus: 2, memoryMiB: 2048 },
    ],
  });
  const lines = text.split('\n');
  assert.match(lines[0]!, /^mvirt top — \? +12:00:00$/);
  assert.equal(lines[1], 'host: waiting for status…');
  const rows = lines.slice(4, 7);
  assert.match(rows[0]!, /^NAME +STATE +VCPU +MEMORY +CPU% +MEM USED +LOAD +UP +NET RX +NET TX$/);
  assert.match(rows[1]!, /^a +ready +1 +256 MiB +12 +50 MiB +0\.50 +90s +2\.0 KiB\/s +10 B\/s$/);
  assert.match(rows[2]!, /^bb +stopped +2 +2 GiB +- +- +- +- +- +-$/);
  assert.equal(rows[1]!.indexOf('ready'), rows[2]!.indexOf('stopped'), 'aligned');
});
