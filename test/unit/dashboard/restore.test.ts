/**
 * The dashboard's restore model (host/dashboard/restore.ts) without a
 * browser: which VMs are marked restored, and the timelines and hygiene facts
 * the detail view draws. Every record goes through the protocol's own schemas
 * first, so a field the page reads that the records lack (or name otherwise)
 * fails here.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SnapshotRecord, VmRecord } from '../../../protocol/records.js';
import {
  currentRestore,
  restoreMark,
  startView,
  type Timeline,
} from '../../../host/dashboard/restore.js';

const AT = '2026-12-01T10:00:00.000Z';

function vm(id: string, name: string, extra: Record<string, unknown> = {}): VmRecord {
  return VmRecord.parse({
    id,
    name,
    state: 'ready',
    vcpus: 1,
    memoryMiB: 256,
    kind: 'service',
    image: 'default',
    backend: 'qemu',
    network: { mode: 'none' },
    metadata: {},
    createdAt: AT,
    updatedAt: AT,
    ...extra,
  });
}

const snapshot = (id: string, name: string, source: { vm: string; name: string }) =>
  SnapshotRecord.parse({
    id,
    name,
    state: 'ready',
    source,
    image: 'default',
    backend: 'qemu',
    vcpus: 1,
    memoryMiB: 256,
    network: { mode: 'none' },
    hypervisor: { version: '7.2.0', machine: 'microvm' },
    bytes: 90 * 1024 * 1024,
    createdAt: AT,
  });

// The source's cold boot: kernel 1.0 s, /init → agent 0.8 s, connect 1.7 s (guest
// clock); spawn → ready 4.2 s on the host clock.
const SRC = vm('vm-src', 'base', {
  boot: { initS: 1.0, agentStartS: 1.8, connectedS: 3.5, readyAtMs: 4200 },
});
const SNAP = snapshot('snap-01', 'warm', { vm: SRC.id, name: SRC.name });
// A fork: its agent's uptimes go on from the snapshot's guest (connected at 312 s),
// and its readyAtMs is the restore's own (the daemon sets both from one measurement).
const FORK = vm('vm-fork', 'fork-1', {
  restoredFrom: SNAP.id,
  boot: { initS: 1.0, agentStartS: 1.8, connectedS: 312.4, readyAtMs: 1900 },
  restore: {
    snapshot: SNAP.id,
    generation: 2,
    spawnToRunningMs: 700,
    readyAtMs: 1900,
    clockStepMs: 298_000.4,
    entropyBytes: 128,
    previousVm: SRC.id,
    network: 'applied',
    jobsDropped: 1,
  },
});
const vms = new Map([SRC, FORK].map((v) => [v.id, v]));
const snaps = new Map([[SNAP.id, SNAP]]);

const stages = (t: Timeline | undefined) => t?.segments.map((s) => [s.stage, Math.round(s.ms)]);

test('a cold-booted VM: no mark, its boot from spawn on the host clock', () => {
  assert.equal(restoreMark(SRC), null);
  const s = startView(SRC, vms, snaps);
  assert.equal(s.empty, undefined);
  assert.deepEqual(
    s.bars.map((b) => b.kind),
    ['boot'],
  );
  // What the guest's stages leave of spawn → ready is the hypervisor's launch.
  assert.deepEqual(stages(s.bars[0]), [
    ['launch', 700],
    ['kernel', 1000],
    ['init', 800],
    ['connect', 1700],
  ]);
  assert.equal(s.bars[0]!.totalMs, 4200);
  assert.equal(s.scaleMs, 4200);
  assert.deepEqual(s.facts, []);
});

test('a VM that has not said hello yet has no timeline, and says why', () => {
  const s = startView(vm('vm-new', 'new', { state: 'starting' }), new Map());
  assert.deepEqual(s.bars, []);
  assert.match(s.empty ?? '', /no boot timeline yet/);
});

test('a fork is marked with its snapshot and generation, by name once the page has the snapshot', () => {
  assert.deepEqual(restoreMark(FORK, snaps), {
    kind: 'fork',
    text: 'fork of warm · gen 2',
    title: 'made from snapshot snap-01; last run restored, identity generation 2',
  });
  assert.equal(restoreMark(FORK)?.text, 'fork of snap-01 · gen 2');
});

test("a fork's restore is drawn beside its source's cold boot, on one scale, with the hygiene facts", () => {
  const s = startView(FORK, vms, snaps);
  assert.deepEqual(
    s.bars.map((b) => [b.kind, b.label, b.vm]),
    [
      ['restore', 'restore', FORK.id],
      ['boot', 'cold boot of base', SRC.id],
    ],
  );
  // Not the fork's own `boot`: its connect stage would be the snapshot's age.
  assert.deepEqual(stages(s.bars[0]), [
    ['load', 700],
    ['agent', 1200],
  ]);
  assert.equal(s.bars[0]!.totalMs, 1900);
  assert.equal(s.scaleMs, 4200, 'the longer bar sets the scale');
  assert.match(s.bars[0]!.note, /state loaded 0\.70 s, ready 1\.90 s/);
  assert.deepEqual(Object.fromEntries(s.facts.map((f) => [f.key, [f.value, f.level]])), {
    from: ['snapshot warm', undefined],
    generation: ['2', undefined],
    clock: ['+298.0 s', undefined],
    entropy: ['128 bytes', undefined],
    identity: ['was base (vm-src), now fork-1 (vm-fork)', undefined],
    network: ['applied', undefined],
    jobs: ['1', undefined],
  });
});

test('a restore still under way: only the load, and the agent facts pending', () => {
  const starting = vm('vm-f2', 'fork-2', {
    state: 'starting',
    restoredFrom: SNAP.id,
    restore: { snapshot: SNAP.id, generation: 2, spawnToRunningMs: 650 },
  });
  assert.equal(currentRestore(starting)?.spawnToRunningMs, 650);
  const s = startView(starting, vms, snaps);
  assert.deepEqual(stages(s.bars[0]), [['load', 650]]);
  assert.match(s.bars[0]!.note, /not ready yet/);
  // The source comes from the snapshot while the agent has not named it.
  assert.equal(s.bars[1]?.vm, SRC.id);
  const pending = s.facts.filter((f) => f.level === 'pending').map((f) => f.key);
  assert.deepEqual(pending, ['clock', 'entropy', 'identity', 'network']);
});

test('a resume: marked resumed, the same identity, compared with nothing it cannot be', () => {
  const r = vm('vm-r', 'sleeper', {
    boot: { initS: 1.0, agentStartS: 1.8, connectedS: 900, readyAtMs: 1500 },
    restore: {
      snapshot: 'suspend',
      generation: 3,
      spawnToRunningMs: 600,
      readyAtMs: 1500,
      clockStepMs: -12,
      clockErrorMs: 3.4,
      clockErrorBoundMs: 7.2,
      entropyBytes: 128,
      network: 'none',
      jobsDropped: 0,
    },
  });
  assert.deepEqual(restoreMark(r), {
    kind: 'resumed',
    text: 'resumed · gen 3',
    title: 'resumed from its suspended state, identity generation 3',
  });
  const s = startView(r, new Map([[r.id, r]]));
  assert.deepEqual(
    s.bars.map((b) => [b.kind, b.label]),
    [['restore', 'resume']],
  );
  const f = Object.fromEntries(s.facts.map((x) => [x.key, x.value]));
  assert.equal(f.from, 'its suspended state');
  assert.equal(f.clock, '-12 ms');
  assert.equal(f.clockError, "+3 ms ± 8 ms off the host's");
  assert.equal(f.identity, 'unchanged (vm-r): a resume');
});

test('a fork that was suspended and resumed says both', () => {
  const v = vm('vm-f3', 'fork-3', {
    state: 'suspended',
    restoredFrom: SNAP.id,
    boot: { initS: 1, agentStartS: 1.8, connectedS: 400, readyAtMs: 1400 },
    restore: { snapshot: 'suspend', generation: 4, spawnToRunningMs: 500, readyAtMs: 1400 },
  });
  assert.equal(restoreMark(v, snaps)?.text, 'fork of warm · resumed · gen 4');
});

test('a restore the VM has cold-booted since is history: lineage stays, the restore goes', () => {
  // The record keeps `restore`; this run's boot has a readyAtMs of its own.
  const rebooted = vm(FORK.id, FORK.name, {
    restoredFrom: SNAP.id,
    boot: { initS: 1.1, agentStartS: 1.9, connectedS: 3.6, readyAtMs: 4400 },
    restore: FORK.restore,
  });
  assert.equal(currentRestore(rebooted), undefined);
  assert.deepEqual(restoreMark(rebooted, snaps), {
    kind: 'fork',
    text: 'fork of warm',
    title: 'made from snapshot snap-01',
  });
  const s = startView(rebooted, vms, snaps);
  assert.deepEqual(
    s.bars.map((b) => [b.kind, b.vm]),
    [['boot', FORK.id]],
  );
  assert.deepEqual(s.facts, []);
  // A resumed VM started cold afterwards (starting: no boot reported yet) is not marked.
  const cold = vm('vm-r', 'sleeper', {
    state: 'starting',
    restore: { snapshot: 'suspend', generation: 3, spawnToRunningMs: 600, readyAtMs: 1500 },
  });
  assert.equal(restoreMark(cold), null);
});

test('what a copy must not share and was not fixed is flagged', () => {
  const v = vm('vm-f4', 'fork-4', {
    restoredFrom: SNAP.id,
    boot: { initS: 1, agentStartS: 1.8, connectedS: 400, readyAtMs: 2000 },
    restore: {
      snapshot: SNAP.id,
      generation: 2,
      spawnToRunningMs: 700,
      readyAtMs: 2000,
      clockStepMs: 5,
      clockErrorMs: -468,
      clockErrorBoundMs: 40,
      entropyBytes: 64,
      network: 'failed',
    },
  });
  const bad = startView(v, vms, snaps)
    .facts.filter((f) => f.level === 'bad')
    .map((f) => [f.key, f.value]);
  assert.deepEqual(bad, [
    ['clockError', "-468 ms ± 40 ms off the host's"],
    ['identity', 'no change reported by the agent'],
    ['network', 'failed'],
  ]);
});
