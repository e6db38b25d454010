import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VM_STATES } from '../../../protocol/rpc.js';
import { canTransition, TRANSITIONS } from '../../../host/vm/states.js';
import { ACTIVE_VM_STATES } from '../../../protocol/states.js';

test('the table covers every state and only names known states', () => {
  assert.deepEqual(Object.keys(TRANSITIONS).sort(), [...VM_STATES].sort());
  for (const [from, tos] of Object.entries(TRANSITIONS)) {
    for (const to of tos) assert.ok(VM_STATES.includes(to), `${from} → ${to}`);
    assert.ok(!tos.includes(from as never), `${from} must not loop onto itself`);
  }
});

test('lifecycle paths of DESIGN are allowed', () => {
  const path = [
    'stopped',
    'starting',
    'ready',
    'busy',
    'ready',
    'paused',
    'ready',
    'starting', // reboot
    'ready',
    'stopping',
    'stopped',
  ] as const;
  for (let i = 1; i < path.length; i++) {
    assert.ok(canTransition(path[i - 1]!, path[i]!), `${path[i - 1]} → ${path[i]}`);
  }
  assert.ok(canTransition('starting', 'failed'));
  assert.ok(canTransition('failed', 'starting'));
  assert.ok(canTransition('starting', 'running'));
  assert.ok(canTransition('ready', 'stopped'), 'the guest may power itself off');
});

test('forbidden transitions are refused', () => {
  assert.ok(!canTransition('stopped', 'ready'));
  assert.ok(!canTransition('stopped', 'stopping'));
  assert.ok(!canTransition('stopping', 'ready'));
  assert.ok(!canTransition('failed', 'ready'));
  assert.ok(!canTransition('starting', 'paused'));
  assert.ok(!canTransition('paused', 'starting'));
});

test('every active state can fail and every state can eventually stop', () => {
  for (const s of ACTIVE_VM_STATES) assert.ok(canTransition(s, 'failed'), s);
  for (const s of VM_STATES) {
    // BFS: stopped is reachable from everywhere.
    const seen = new Set<(typeof VM_STATES)[number]>([s]);
    const queue = [s as (typeof VM_STATES)[number]];
    while (queue.length) {
      for (const n of TRANSITIONS[queue.shift()!]) {
        if (seen.has(n)) continue;
        seen.add(n);
        queue.push(n);
      }
    }
    assert.ok(s === 'stopped' || seen.has('stopped'), `${s} cannot reach stopped`);
  }
});
