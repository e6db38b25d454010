import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import type { ChildProcess } from 'node:child_process';
import { startHarness, ROOT, VM, type Harness } from '../../support/agent-harness.js';
import { identityFile, IDENTITY_ENTROPY } from '../../support/agent-platform.js';

const FORK = 'vm-fork';
const NET = { mac: '52:54:00:00:00:2a', ip: '10.9.0.42/24', gw: '10.9.0.1', dns: '10.9.0.1' };

/** Every killGroup call the agent makes from now on. */
function recordKills(h: Harness): Array<[number, NodeJS.Signals]> {
  const kills: Array<[number, NodeJS.Signals]> = [];
  const kill = h.platform.killGroup;
  h.platform.killGroup = (pgid, sig) => {
    kills.push([pgid, sig]);
    return kill(pgid, sig);
  };
  return kills;
}

/** Start a long job; resolves with its process. */
async function longJob(h: Harness, jobId: string): Promise<ChildProcess> {
  const spawned = once(h.platform.events, 'spawn');
  const r = await h.request('exec', { id: `e-${jobId}`, jobId, argv: ['sleep', '60'] });
  assert.equal(r.ok, true, JSON.stringify(r.error));
  return (await spawned)[0] as ChildProcess;
}

/** The host side goes away; resolves once the agent has noticed and tried again. */
async function hostAway(h: Harness): Promise<void> {
  h.platform.channelAvailable = false;
  const attempt = once(h.platform.events, 'attempt');
  h.platform.current?.destroy();
  await attempt;
}

test('at start a valid identity wins over the command line', async () => {
  const h = await startHarness({ start: false });
  try {
    h.platform.identity = identityFile({ generation: 3, vmId: FORK, hostname: 'fork', net: NET });
    await h.agent.start();
    const hello = await h.waitFor('hello');
    assert.equal(h.received[0]?.topic, `${ROOT}/agent/${FORK}/up/hello`);
    assert.deepEqual(h.clientIds, [`agent-${FORK}`]);
    assert.equal(hello.generation, 3);
    assert.equal(hello.restored, undefined);
    assert.equal(hello.hostname, 'fork');
    // Another VM than the command line's: the agent restarted inside a fork,
    // so the OS side is applied (again).
    assert.deepEqual(h.platform.nics, [NET]);
    assert.deepEqual(h.platform.entropy, [IDENTITY_ENTROPY]);
    const r = await h.request('ping', { id: 'p-fork' }, FORK);
    assert.equal(r.ok, true);
  } finally {
    await h.close();
  }
});

test('a bad identity is ignored with a warning: the command line stays', async () => {
  for (const bad of [Buffer.from('{"v":1,'.padEnd(1024)), new Error('EIO: i/o error, read')]) {
    const h = await startHarness({ start: false });
    try {
      h.platform.identity = bad;
      await h.agent.start();
      const hello = await h.waitFor('hello');
      assert.equal(h.received[0]?.topic, `${ROOT}/agent/${VM}/up/hello`);
      assert.equal(hello.generation, undefined);
      const log = await h.waitFor('log', (l) => l.message.startsWith('identity ignored'));
      assert.equal(log.level, 'warn');
      assert.match(
        log.message,
        bad instanceof Error
          ? /^identity ignored \(running as vm-test\): cannot read it: EIO/
          : /^identity ignored \(running as vm-test\): not JSON/,
      );
      assert.deepEqual(h.platform.entropy, []);
    } finally {
      await h.close();
    }
  }
});

test('at a cold boot the µOS default hostname (the VM id) becomes the VM name; a chosen one stays', async () => {
  for (const [was, want] of [
    [VM, 'named-vm'],
    ['from-cloud-config', 'from-cloud-config'],
  ] as const) {
    const h = await startHarness({ start: false });
    try {
      h.platform.hostname = was;
      h.platform.identity = identityFile({ vmId: VM, hostname: 'named-vm' });
      await h.agent.start();
      const hello = await h.waitFor('hello');
      assert.equal(hello.hostname, want);
      assert.equal(hello.restored, undefined);
    } finally {
      await h.close();
    }
  }
});

test('restored as another VM: its topics and client id, restored in hello, the old jobs and messages gone', async () => {
  const h = await startHarness({ start: false });
  try {
    h.platform.identity = identityFile({ vmId: VM, hostname: VM });
    await h.agent.start();
    const first = await h.waitFor('hello');
    assert.equal(first.generation, 0);
    // A cold boot leaves the hostname to the µOS and its cloud-config.
    assert.equal(first.hostname, 'guest');
    const proc = await longJob(h, 'job-source');
    const kills = recordKills(h);

    await hostAway(h);
    h.agent.log('info', 'said by the source VM while away');
    const entropy = Buffer.alloc(48, 7);
    h.platform.identity = identityFile({
      generation: 1,
      vmId: FORK,
      hostname: 'fork-1',
      entropy: entropy.toString('base64'),
      net: NET,
    });
    const closed = once(proc, 'close');
    const since = h.received.length;
    h.platform.channelAvailable = true;

    const hello = await h.waitFor('hello', undefined, { since });
    assert.equal(h.received[since]?.topic, `${ROOT}/agent/${FORK}/up/hello`);
    assert.equal(h.clientIds.at(-1), `agent-${FORK}`);
    assert.equal(hello.generation, 1);
    assert.deepEqual(hello.restored, {
      fromGeneration: 0,
      generation: 1,
      previous: { vmId: VM, hostname: 'guest' },
      entropyBytes: 48,
      // Re-addressed beside the reconnect; the sync reply says how it went.
      network: 'pending',
      jobsDropped: 1,
    });
    assert.deepEqual(hello.jobs, []);
    assert.equal(hello.hostname, 'fork-1');
    assert.deepEqual(h.platform.entropy.at(-1), entropy);
    assert.deepEqual(h.platform.nics, [], 'the NIC waits for the host’s sync');
    const synced = await h.request(
      'sync',
      { id: 's-fork', stepMs: 0, entropy: Buffer.alloc(16) },
      FORK,
    );
    assert.equal((synced.result as { network?: string }).network, 'applied');
    assert.deepEqual(h.platform.nics, [NET]);
    // The source's job was killed, group and all.
    assert.deepEqual(kills, [[proc.pid, 'SIGKILL']]);
    await closed;

    // The fork answers on its own topics; the round trip also lets anything
    // the old job's end would have sent arrive first.
    const r = await h.request('ping', { id: 'p-after' }, FORK);
    assert.equal(r.ok, true);
    const after = h.received.slice(since);
    assert.deepEqual(
      after.filter((m) => !m.topic.startsWith(`${ROOT}/agent/${FORK}/`)),
      [],
    );
    assert.equal(
      h.all('exit').find((e) => e.jobId === 'job-source'),
      undefined,
    );
    assert.equal(
      h.all('log').find((l) => l.message.includes('said by the source')),
      undefined,
    );
    const log = await h.waitFor('log', (l) => l.message.startsWith('restored:'), { since });
    assert.match(
      log.message,
      /generation 0 → 1, now vm-fork \(was vm-test; 1 running jobs ended\)/,
    );
    assert.equal(
      h.received.find((m) => m.invalid),
      undefined,
    );
  } finally {
    await h.close();
  }
});

test('resumed as the same VM: a new generation keeps the jobs, and restored is said once', async () => {
  const h = await startHarness({ start: false });
  try {
    h.platform.identity = identityFile({ vmId: VM, hostname: VM, net: NET });
    await h.agent.start();
    await h.waitFor('ready');
    await longJob(h, 'job-kept');
    const kills = recordKills(h);

    h.platform.identity = identityFile({ generation: 1, vmId: VM, hostname: VM, net: NET });
    let since = h.received.length;
    h.platform.current?.destroy();
    const hello = await h.waitFor('hello', undefined, { since });
    assert.equal(h.received[since]?.topic, `${ROOT}/agent/${VM}/up/hello`);
    assert.deepEqual(hello.restored, {
      fromGeneration: 0,
      generation: 1,
      previous: { vmId: VM, hostname: 'guest' },
      entropyBytes: IDENTITY_ENTROPY.length,
      network: 'none',
      jobsDropped: 0,
    });
    assert.deepEqual(
      hello.jobs.map((j) => [j.jobId, j.state]),
      [['job-kept', 'running']],
    );
    assert.deepEqual(kills, []);
    // Same MAC and address: the NIC is left alone.
    assert.deepEqual(h.platform.nics, []);

    // The next reconnect without a new generation: no restored, the generation still said.
    since = h.received.length;
    h.platform.current?.destroy();
    const again = await h.waitFor('hello', undefined, { since });
    assert.equal(again.generation, 1);
    assert.equal(again.restored, undefined);
    assert.equal(again.jobs.length, 1);
  } finally {
    await h.close();
  }
});

test('restored without an identity before: from generation 0, and a NIC that fails is reported', async () => {
  const h = await startHarness({ start: false });
  try {
    await h.agent.start();
    const first = await h.waitFor('hello');
    assert.equal(first.generation, undefined);

    h.platform.failures.nic =
      'ip link set dev eth0 address 52:54:00:00:00:2a: RTNETLINK answers: Device or resource busy';
    h.platform.identity = identityFile({ generation: 2, vmId: FORK, hostname: 'fork', net: NET });
    const since = h.received.length;
    h.platform.current?.destroy();
    const hello = await h.waitFor('hello', undefined, { since });
    assert.equal(hello.restored?.fromGeneration, 0);
    assert.equal(hello.restored?.generation, 2);
    assert.equal(hello.restored?.network, 'pending');
    const synced = await h.request(
      'sync',
      { id: 's-nic', stepMs: 0, entropy: Buffer.alloc(16) },
      FORK,
    );
    assert.equal((synced.result as { network?: string }).network, 'failed');
    const warn = await h.waitFor('log', (l) => l.message.startsWith('restore: network'), { since });
    assert.equal(warn.level, 'warn');
    assert.match(warn.message, /Device or resource busy/);
  } finally {
    await h.close();
  }
});

test('over tcp the identity token is the password, for the identity VM', async () => {
  const h = await startHarness({
    start: false,
    settings: { channel: { kind: 'tcp', host: '10.0.2.2', port: 1883 } },
  });
  try {
    const logins: Array<[string, string]> = [];
    h.broker.authenticate = (client, username, password, done) => {
      logins.push([username ?? '', password?.toString() ?? '']);
      done(null, true);
    };
    // No token file: without the identity's token the agent could not log in at all.
    assert.equal(h.platform.files.has('/run/mvirt/token'), false);
    h.platform.identity = identityFile({ vmId: FORK, hostname: FORK, token: 'per-vm-token' });
    await h.agent.start();
    await h.waitFor('ready');
    assert.deepEqual(logins, [[FORK, 'per-vm-token']]);
  } finally {
    await h.close();
  }
});
