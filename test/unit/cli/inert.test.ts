/**
 * The neutraliser on its own (protocol/inert.ts): each class of character
 * that acts on a terminal instead of printing comes out as its visible
 * escape, plain text is untouched, JSON stays the same data; and the agent
 * schemas refuse what no genuine agent sends (controls in names, figures
 * beyond any VM) while free text keeps its record.
 */
/* eslint-disable no-control-regex -- these tests look for control characters */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Exit, Hello, Log, Telemetry, TELEMETRY_LIMITS } from '../../../protocol/agent.js';
import { inert, inertDeep, inertJson, inertLines, isInert } from '../../../protocol/inert.js';
import { keyValues, table } from '../../../host/cli/output.js';
import { eventLine } from '../../../host/cli/events.js';

/** What a terminal acts on: nothing of it may survive. */
const ACTIVE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]/;

const CASES: [string, string, string][] = [
  ['CSI screen clear', '\x1b[2J\x1b[H', '\\x1b[2J\\x1b[H'],
  ['OSC 0 window title (BEL-terminated)', '\x1b]0;owned\x07', '\\x1b]0;owned\\x07'],
  [
    'OSC 8 hyperlink (ST-terminated)',
    '\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\',
    '\\x1b]8;;https://evil.example/\\x1b\\click\\x1b]8;;\\x1b\\',
  ],
  ['bell', 'ding\x07', 'ding\\x07'],
  ['C1 CSI (8-bit ESC [)', '\u009b2J', '\\x9b2J'],
  ['C1 OSC and NEL', '\u009d0;t\u0085', '\\x9d0;t\\x85'],
  ['DEL and backspace (overwrite what was shown)', 'ok\x08\x08no\x7f', 'ok\\x08\\x08no\\x7f'],
  ['right-to-left override', 'vm\u202Efdp.exe', 'vm\\u202efdp.exe'],
  ['bidi isolates and marks', '\u2066a\u2069\u200f\u061c', '\\u2066a\\u2069\\u200f\\u061c'],
  [
    'newline, carriage return and tab (forged lines, broken cells)',
    'a\nb\rc\td',
    'a\\x0ab\\x0dc\\x09d',
  ],
  ['line separator and BOM', 'a\u2028b\ufeff', 'a\\u2028b\\ufeff'],
];

for (const [what, raw, shown] of CASES) {
  test(`inert: ${what}`, () => {
    assert.equal(inert(raw), shown);
    assert.doesNotMatch(inert(raw), ACTIVE);
    assert.equal(isInert(raw), false);
    assert.equal(isInert(inert(raw)), true);
  });
}

test('inert: printable text in any script is left as it is', () => {
  for (const s of ['6.1.0-13-amd64', 'grüße', 'ウェブ', 'مرحبا', '/mnt/data disk', 'emoji 🚀', ''])
    assert.equal(inert(s), s);
});

test('inertLines keeps newlines only; inertJson is the same data, nothing active', () => {
  assert.equal(inertLines('a\x1b[31m\nb\u202e'), 'a\\x1b[31m\nb\\u202e');
  const v = { m: '\x1b]0;t\x07\u009b\u202e\u2028ok', n: [1, '\u0085'] };
  const j = inertJson(v, 2);
  assert.doesNotMatch(j, /[\u001b\u007f-\u009f\u202e\u2028]/);
  assert.deepEqual(JSON.parse(j), v, 'parses back to the very same value');
});

test('inertDeep: every string of a message, bytes kept', () => {
  const data = new Uint8Array([0x1b, 0x5b]);
  const m = inertDeep({ a: '\x1b[2J', b: ['\u202e'], c: { d: 1, data } });
  assert.deepEqual(m, { a: '\\x1b[2J', b: ['\\u202e'], c: { d: 1, data } });
  assert.equal(m.c.data, data, 'byte arrays are not copied or changed');
});

test('CLI tables, key/value blocks and event lines show guest strings inert', () => {
  const evil = '\x1b[2J\x1b]0;t\x07\u202eX';
  const out = [
    table(['name', 'agent'], [['vm', evil]]),
    keyValues([['Agent', evil]]),
    eventLine({
      id: 1,
      at: '2026-01-01T00:00:00Z',
      level: 'warn',
      component: 'job',
      message: `failed: ${evil}\nforged line`,
      objects: ['vm-1'],
    }),
  ].join('');
  assert.doesNotMatch(out.replace(/\n/g, ''), ACTIVE);
  assert.ok(out.includes('\\x1b[2J\\x1b]0;t\\x07\\u202eX'));
  assert.equal(out.split('\n').filter((l) => l.includes('forged line')).length, 1);
  assert.ok(!out.split('\n').some((l) => l.startsWith('forged line')), 'no line of its own');
});

const hello = {
  protocol: 1,
  agentVersion: '0.1.0',
  kernel: '6.1.0-13-amd64',
  hostname: '(none)',
  pid: 1,
  boot: { initS: 0.5, agentStartS: 0.7, connectedS: 0.9 },
  jobs: [],
};
const sample = {
  at: 1,
  cpuPercent: 50,
  memUsedMiB: 100,
  memTotalMiB: 200,
  load1: 0.1,
  load5: 0.1,
  load15: 0.1,
  uptimeS: 10,
  procs: 12,
  disk: [{ mount: '/', totalBytes: 100, usedBytes: 10 }],
  net: [{ iface: 'eth0', rxBytes: 1, txBytes: 2, rxPackets: 1, txPackets: 1 }],
};

test('schema: names a guest reads from its kernel are refused with controls or bidi characters', () => {
  assert.equal(Hello.safeParse(hello).success, true, 'a genuine hello');
  for (const [field, v] of [
    ['agentVersion', '0.1\x1b[2J'],
    ['agentVersion', 'v 1'],
    ['agentVersion', ''],
    ['kernel', '6.1\x07'],
    ['kernel', '6.1\u202e'],
    ['hostname', 'host\u009b'],
    ['hostname', 'two words'],
  ] as const)
    assert.equal(
      Hello.safeParse({ ...hello, [field]: v }).success,
      false,
      `${field} ${JSON.stringify(v)}`,
    );
  const net = (iface: string) => ({ ...sample, net: [{ ...sample.net[0]!, iface }] });
  const disk = (mount: string) => ({ ...sample, disk: [{ ...sample.disk[0]!, mount }] });
  assert.equal(Telemetry.safeParse(sample).success, true);
  assert.equal(Telemetry.safeParse(net('eth0\x1b]8;;x\x1b\\')).success, false);
  assert.equal(Telemetry.safeParse(disk('/mnt/\u202e')).success, false);
  assert.equal(Telemetry.safeParse(net('x'.repeat(33))).success, false);
});

test('schema: figures no VM can report are refused (negative, infinite, beyond any VM)', () => {
  for (const [field, v] of [
    ['cpuPercent', TELEMETRY_LIMITS.cpuPercent + 1],
    ['cpuPercent', -1],
    ['memUsedMiB', Infinity],
    ['memUsedMiB', 1e300],
    ['memTotalMiB', -5],
    ['load1', NaN],
    ['uptimeS', 1e12],
    ['procs', 1e9],
  ] as const)
    assert.equal(Telemetry.safeParse({ ...sample, [field]: v }).success, false, `${field} ${v}`);
  const bytes = { ...sample, net: [{ ...sample.net[0]!, rxBytes: 2 ** 60 }] };
  assert.equal(Telemetry.safeParse(bytes).success, false, 'counters stay exact doubles');
  // Whatever passes, memory in bytes is finite: +Inf can never reach /metrics.
  assert.ok(Number.isFinite(TELEMETRY_LIMITS.memMiB * 1024 * 1024));
});

test('schema: free text keeps its record (only its length is bounded)', () => {
  assert.equal(Log.safeParse({ level: 'info', message: '\x1b[2Jhi\u202e' }).success, true);
  assert.equal(Log.safeParse({ level: 'info', message: 'x'.repeat(4097) }).success, false);
  const exit = {
    jobId: 'job-1',
    seq: 0,
    exitCode: null,
    signal: null,
    oomKilled: false,
    timedOut: false,
    error: 'spawn \x1b]0;t\x07 ENOENT',
    startedAt: 1,
    finishedAt: 2,
  };
  assert.equal(Exit.safeParse(exit).success, true);
  assert.equal(Exit.safeParse({ ...exit, jobId: 'job\x1b' }).success, false, 'ids are strict');
  assert.equal(Exit.safeParse({ ...exit, signal: 'SIG\x07' }).success, false);
  assert.equal(Exit.safeParse({ ...exit, finishedAt: Infinity }).success, false);
});
