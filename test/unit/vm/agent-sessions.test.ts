/**
 * The host's agent sessions (host/agent/sessions.ts) on a fake bus and fake
 * channels: which hello is the VM's agent's, as channels close and sessions
 * start over. The broker delivers a message after the session that sent it
 * may already have ended (a refused publish right behind a hello closes the
 * channel at once), so hellos arrive late in ways a real guest produces
 * (test/integration/guest-takeover.test.ts).
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import {
  createAgentSessions,
  FLAPPING_MAX_MS,
  RECONNECT_MIN_MS,
} from '../../../host/agent/sessions.js';
import type { AgentChannelHandle, MessageHandler, Sender } from '../../../host/broker/types.js';
import { silentLogger } from '../../../host/log.js';
import { AGENT_PROTOCOL_VERSION, type Hello } from '../../../protocol/agent.js';
import { encodeCbor } from '../../../protocol/codec.js';
import { topics } from '../../../protocol/topics.js';

const ROOT = 'mvirt/h1';
const VM = 'vm-1';

interface FakeChannel extends AgentChannelHandle {
  end(): void;
  restart(): void;
}

function fakeChannel(): FakeChannel {
  let end = (): void => undefined;
  const closed = new Promise<void>((resolve) => (end = resolve));
  const restarts: Array<() => void> = [];
  return {
    closed,
    close: () => end(),
    hold: () => undefined,
    onRestart: (l) => void restarts.push(l),
    end: () => end(),
    restart: () => restarts.forEach((l) => l()),
  };
}

/** A distinct broker session each (the broker has one Sender per client connection). */
const session = (): Sender => ({
  actor: { kind: 'guest', vmId: VM },
  access: { role: 'viewer', scope: null },
  replyRefusal: () => 'a guest gets no replies',
});

const hello = (agentVersion: string): Hello => ({
  protocol: AGENT_PROTOCOL_VERSION,
  agentVersion,
  kernel: 'k',
  hostname: VM,
  pid: 1,
  boot: { initS: 1, agentStartS: 2, connectedS: 3 },
  jobs: [],
});

async function setup() {
  let deliver: MessageHandler = () => undefined;
  const channels: FakeChannel[] = [];
  let attached: () => void = () => undefined;
  const refused: string[] = [];
  const heard: string[] = [];
  const sessions = createAgentSessions({
    bus: {
      publish: async () => undefined,
      subscribe: async (_filter, handler) => {
        deliver = handler;
        return async () => undefined;
      },
    },
    attachChannel: () => {
      const c = fakeChannel();
      channels.push(c);
      attached();
      return c;
    },
    topics: topics(ROOT),
    log: silentLogger(),
    guest: { refuse: (_vm, what) => void refused.push(what) },
  });
  await sessions.start();
  sessions.listen({ hello: (_vm, h) => void heard.push(h.agentVersion) });
  sessions.open(VM, {
    log: silentLogger(),
    overNetwork: false,
    connect: async () => new PassThrough(),
  });
  await sessions.connect(VM);
  return {
    sessions,
    channels,
    refused,
    heard,
    say: (agentVersion: string, from: Sender): void =>
      deliver(topics(ROOT).agentUp(VM, 'hello'), encodeCbor(hello(agentVersion)), from),
    /** The host's next end of the channel (after its reconnect backoff). */
    reattached: () => new Promise<void>((resolve) => (attached = resolve)),
  };
}

test('a hello that arrives after its channel closed is dropped; the next agent is heard', async () => {
  const h = await setup();
  const first = session();
  h.say('1.0.0', first);
  assert.deepEqual(h.heard, ['1.0.0']);

  const next = h.reattached();
  h.channels[0]!.end();
  await h.channels[0]!.closed;
  // The session closed with a hello still in the broker's hands.
  h.say('0.0.0-late', session());
  assert.equal(h.sessions.hello(VM), undefined);
  assert.deepEqual(h.refused, ['hellos of a closed channel dropped']);

  await next;
  h.say('1.0.1', session());
  assert.deepEqual(h.heard, ['1.0.0', '1.0.1']);
  assert.equal(h.sessions.hello(VM)?.agentVersion, '1.0.1');
  await h.sessions.close();
});

test('one hello per broker session; a late one of a session the agent started over from is dropped', async () => {
  const h = await setup();
  const a = session();
  h.say('1.0.0', a);
  h.say('1.0.0', a);
  assert.deepEqual(h.refused, ['hellos refused (one per session)']);

  // The agent starts over on the same channel; a hello of its old session
  // is delivered only now.
  h.channels[0]!.restart();
  h.say('0.0.0-late', a);
  const b = session();
  h.say('1.0.1', b);
  assert.equal(h.sessions.hello(VM)?.agentVersion, '1.0.1');
  h.say('1.0.1', b);
  assert.deepEqual(h.refused, [
    'hellos refused (one per session)',
    'hellos of an ended session dropped',
    'hellos refused (one per session)',
  ]);
  assert.deepEqual(h.heard, ['1.0.0', '1.0.1']);
  await h.sessions.close();
});

test('a guest that says hello and breaks its channel at once waits longer each time, up to a cap', async () => {
  const h = await setup();
  // Each round: a hello, the channel closed at once (as a refused QoS 2
  // publish closes it), then the time until the host's next end.
  const waits: number[] = [];
  for (let i = 0; i < 5; i++) {
    h.say('1.0.0', session());
    const next = h.reattached();
    const t0 = performance.now();
    h.channels.at(-1)!.end();
    await next;
    waits.push(performance.now() - t0);
  }
  const expected = [2, 4, 8, 16, 32].map((k) => Math.min(RECONNECT_MIN_MS * k, FLAPPING_MAX_MS));
  for (const [i, w] of waits.entries()) {
    // Timers fire no earlier than asked; the upper bound only catches a wait that grew too far.
    assert.ok(
      w >= expected[i]! - 5,
      `round ${i}: waited ${w.toFixed(0)} ms, expected ${expected[i]}`,
    );
    assert.ok(
      w < expected[i]! + 2000,
      `round ${i}: waited ${w.toFixed(0)} ms, expected ${expected[i]}`,
    );
  }
  await h.sessions.close();
});
