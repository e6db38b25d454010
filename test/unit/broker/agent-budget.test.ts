/**
 * The per-VM agent budget (host/broker/agent-budget.ts) on a clock the test
 * moves: a burst passes, a debt is paid at the refill rate, both dimensions
 * count, and a VM's entry lives exactly as long as it carries a debt.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createAgentBudget, createAgentBudgets } from '../../../host/broker/agent-budget.js';

const limits = { packetsPerS: 100, packetBurst: 200, bytesPerS: 1000, byteBurst: 2000 };

test('a burst passes, then the wait pays the debt at the refill rate', () => {
  let t = 0;
  const b = createAgentBudget(limits, () => t);
  assert.equal(b.charge(200, 0), 0, 'the whole burst is free');
  assert.equal(b.charge(50, 0), 500, '50 packets over at 100/s: half a second');
  t += 500;
  assert.equal(b.charge(0, 0), 0, 'paid');
  t += 10_000;
  assert.equal(b.charge(200, 0), 0, 'refilled, but never above the burst …');
  assert.equal(b.charge(1, 0), 10, '… so one more packet waits');
  assert.deepEqual(b.throttled, { times: 2, ms: 510 });
});

test('bytes count as well as packets; the longer wait wins', () => {
  let t = 0;
  const b = createAgentBudget(limits, () => t);
  assert.equal(b.charge(1, 6000), 4000, '4,000 bytes over at 1,000/s');
  t += 1000;
  assert.equal(b.charge(150, 0), 3000, 'bytes still owe 3 s; packets are within their burst');
});

test('all streams of a VM share one budget; a VM with no debt left is forgotten', () => {
  let t = 0;
  const budgets = createAgentBudgets(limits, () => t);
  const first = budgets.of('vm-a');
  const second = budgets.of('vm-a');
  assert.equal(first.charge(200, 0), 0);
  assert.ok(second.charge(100, 0) > 0, 'a second stream of the VM finds the debt');
  assert.equal(budgets.of('vm-b').charge(200, 0), 0, 'another VM has its own');
  assert.equal(budgets.size, 2);
  // vm-a owes 100 packets (1 s) and has 200 to refill (2 s more); vm-b needs 2 s.
  t += 2500;
  budgets.of('vm-c');
  assert.equal(budgets.size, 2, 'vm-b refilled and was dropped; vm-a still refills');
  t += 2000; // sweeps come at most once per 2 s (an empty budget's refill time)
  budgets.of('vm-c');
  assert.equal(budgets.size, 1, 'only the VM just asked for is left');
  assert.equal(second.charge(200, 0), 0, 'a forgotten VM comes back with a full budget');
});
