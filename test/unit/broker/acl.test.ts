import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  agentPublishProblem,
  agentSubscribeProblem,
  controllerMayReceive,
  controllerPublishProblem,
  controllerSubscribeProblem,
  agentMayReceive,
} from '../../../host/broker/acl.js';
import { clientIdProblem, filterProblem } from '../../../host/broker/validate.js';

const R = 'mvirt/h1';
const ok = (p: string | null, what: string) => assert.equal(p, null, what);
const no = (p: string | null, what: string) => assert.notEqual(p, null, what);

test('controller publish: rpc, console/in and outside the root only', () => {
  ok(controllerPublishProblem(R, `${R}/rpc/vm.create`, false), 'rpc');
  ok(controllerPublishProblem(R, `${R}/vm/web-1/console/in`, false), 'console in');
  ok(controllerPublishProblem(R, 'ctl/alice/replies', false), 'own reply topic');
  ok(controllerPublishProblem(R, 'ctl/alice/state', true), 'retained outside the root');
  ok(controllerPublishProblem(R, 'mvirt/h1x/status', false), 'a sibling prefix is outside');
  ok(controllerPublishProblem(R, 'other/_broker', false), "another prefix's _broker");
  for (const t of [
    `${R}/status`,
    R,
    `${R}/vm/web-1/state`,
    `${R}/vm/web-1/events`,
    `${R}/vm/web-1/console/out`,
    `${R}/vm/../console/in`,
    `${R}/vm/a/b/console/in`,
    `${R}/job/j1/state`,
    `${R}/agent/vm1/up/hello`,
    `${R}/agent/vm1/down/exec`,
    `${R}/rpc/a/b`,
    `${R}/rpc/`,
    `${R}/events`,
    '$SYS/anything',
    'mvirt/_broker',
  ])
    no(controllerPublishProblem(R, t, false), t);
  no(controllerPublishProblem(R, `${R}/rpc/vm.create`, true), 'retained rpc');
});

test('publish topics: no wildcards, NUL, control characters; bounded', () => {
  for (const t of [
    'a/+',
    'a/#',
    '#',
    'a\u0000b',
    'a\u001fb',
    'a\u007f',
    '',
    'x'.repeat(600),
    'a/'.repeat(20) + 'b',
  ])
    no(controllerPublishProblem(R, t, false), JSON.stringify(t));
});

test('controller subscribe: anything well formed except the agent subtree; delivery filter hides agents', () => {
  for (const f of ['#', `${R}/#`, `${R}/vm/+/state`, '$SYS/#', `mvirt/+/agent/#`])
    ok(controllerSubscribeProblem(R, f), f);
  for (const f of [
    `${R}/agent/#`,
    `${R}/agent`,
    `${R}/agent/vm1/up/+`,
    'a/#/b',
    'a/b#',
    'a+/b',
    'a/\u0000',
  ])
    no(controllerSubscribeProblem(R, f), f);
  assert.equal(controllerMayReceive(R, `${R}/agent/vm1/up/hello`), false);
  assert.equal(controllerMayReceive(R, `${R}/vm/vm1/state`), true);
});

test('agent: own up/ to publish, own down/ to subscribe, nothing else', () => {
  ok(agentPublishProblem(R, 'vm1', `${R}/agent/vm1/up/hello`, false), 'own up');
  no(agentPublishProblem(R, 'vm1', `${R}/agent/vm1/up/hello`, true), 'retained');
  for (const t of [
    `${R}/agent/vm1/up`,
    `${R}/agent/vm1/up/`,
    `${R}/agent/vm1/down/exec`,
    `${R}/agent/vm2/up/hello`,
    `${R}/agent/vm10/up/hello`,
    `${R}/rpc/vm.create`,
    `${R}/vm/vm1/state`,
    `${R}/status`,
    '$SYS/x',
    'elsewhere',
  ])
    no(agentPublishProblem(R, 'vm1', t, false), t);
  ok(agentSubscribeProblem(R, 'vm1', `${R}/agent/vm1/down/+`), 'own down +');
  ok(agentSubscribeProblem(R, 'vm1', `${R}/agent/vm1/down/#`), 'own down #');
  ok(agentSubscribeProblem(R, 'vm1', `${R}/agent/vm1/down/exec`), 'own down exec');
  for (const f of [
    '#',
    '$SYS/#',
    `${R}/#`,
    `${R}/agent/#`,
    `${R}/agent/+/down/#`,
    `${R}/agent/vm1/#`,
    `${R}/agent/vm1/+/exec`,
    `${R}/agent/vm1/down`,
    `${R}/agent/vm2/down/#`,
    `${R}/rpc/+`,
    `${R}/agent/vm1/down/#/x`,
  ])
    no(agentSubscribeProblem(R, 'vm1', f), f);
  assert.equal(agentMayReceive(R, 'vm1', `${R}/agent/vm1/down/exec`), true);
  assert.equal(agentMayReceive(R, 'vm1', `${R}/agent/vm2/down/exec`), false);
});

test('client ids: what MQTT allows, unless it would alias a topic level', () => {
  for (const id of [
    'ctl-1',
    'mqttjs_abc123',
    'mosq-XyZ',
    'agent-vm1',
    'a b',
    'mosqpub|12-host',
    'é',
  ])
    ok(clientIdProblem(id), id);
  for (const id of ['', 'a/b', 'a+b', 'a#b', 'a\u0000b', 'a\nb', '..', '.', '$SYS', 'x'.repeat(65)])
    no(clientIdProblem(id), JSON.stringify(id));
});

test('filters: wildcards fill whole levels, # last', () => {
  for (const f of ['#', '+', 'a/+/b', 'a/#', '+/+/#']) ok(filterProblem(f), f);
  for (const f of ['a/#/b', 'a#', 'a/b+', '++', '']) no(filterProblem(f), f);
});
