/**
 * The CLI end to end in-process: runCli against the real mvirtd (in-process,
 * its VMs fake processes running the real agent core; harness/fake-vms.ts),
 * with a spy on the requests the daemon received.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { runCli } from '../../../host/cli/run.js';
import { escapeFilter } from '../../../host/cli/console.js';
import { parseSince } from '../../../host/cli/events.js';
import { result } from '../../../harness/client.js';
import { cliEnv } from '../../../harness/connect.js';
import { spyRequests, type RequestSpy } from '../../../harness/daemon.js';
import { memoryIo, type MemoryIo } from '../../support/cli-io.js';
import { cleanupAll, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

describe('mvirt commands against mvirtd', () => {
  let j: JobDaemon;
  let spy: RequestSpy;
  before(async () => {
    j = await startJobDaemon();
    spy = await spyRequests(j.d);
  });
  after(async () => {
    await spy.stop();
    await cleanupAll();
  });
  const env = (): Record<string, string> => cliEnv(j.d);

  async function mvirt(argv: string[], io: MemoryIo = memoryIo({ env: env() })) {
    const code = await runCli(argv, io);
    return { code, out: io.out(), err: io.errText(), io };
  }

  it('info prints the host, and --json the system.info result', async () => {
    const r = await mvirt(['info']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^Host: +test-host$/m);
    assert.match(r.out, /^BACKEND +AVAILABLE +ACCEL/m);
    assert.match(r.out, /^qemu +yes +fake/m);
    const j = await mvirt(['info', '--json']);
    assert.equal(JSON.parse(j.out).hostId, 'test-host');
  });

  it('vm create, ls, get, start, stop, rm', async () => {
    let r = await mvirt([
      'vm',
      'create',
      'web-1',
      '--vcpus',
      '2',
      '--memory',
      '512',
      '--meta',
      'team=blue',
      '--network',
      'user',
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^created web-1 \(vm-[0-9a-f]+\): 2 vCPU, 512 MiB, stopped$/m);
    assert.deepEqual(spy.requests.at(-1)?.params, {
      name: 'web-1',
      vcpus: 2,
      memoryMiB: 512,
      metadata: { team: 'blue' },
      network: { mode: 'user' },
    });

    r = await mvirt(['vm', 'ls']);
    assert.match(r.out, /^NAME +ID +STATE +VCPUS +MEMORY +KIND +IMAGE +CREATED$/m);
    assert.match(r.out, /^web-1 +vm-\w+ +stopped +2 +512 MiB +service +default +just now$/m);

    r = await mvirt(['vm', 'ls', '--state', 'ready']);
    assert.equal(r.out, 'no VMs are ready\n');

    r = await mvirt(['--json', 'vm', 'ls']);
    assert.equal(JSON.parse(r.out).vms[0].name, 'web-1');

    r = await mvirt(['vm', 'get', 'web-1']);
    assert.match(r.out, /^State: +stopped$/m);
    assert.match(r.out, /^Metadata: +team=blue$/m);

    r = await mvirt(['vm', 'start', 'web-1']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /starting web-1/);
    assert.match(r.err, /web-1: starting \(start requested\) after/);
    assert.match(r.err, /web-1: ready \(the agent is ready\) after/);
    assert.match(r.out, /^web-1 \(vm-\w+\) is ready after/);
    assert.deepEqual(spy.requests.at(-1)?.params, {
      vm: result(await j.c.call('vm.get', { vm: 'web-1' })).id,
      wait: true,
    });

    r = await mvirt(['vm', 'rm', 'web-1']);
    assert.equal(r.code, 1);
    assert.match(r.err, /VM_RUNNING[\s\S]*hint: stop it first/);

    r = await mvirt(['vm', 'stop', 'web-1', '--timeout', '5']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^web-1 \(vm-\w+\) is stopped/m, r.out);
    assert.equal((spy.requests.at(-1)?.params as { timeoutMs: number }).timeoutMs, 5000);

    r = await mvirt(['vm', 'rm', 'web-1']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'deleted web-1\n');
  });

  it('vm rm --force kills a running VM first', async () => {
    await mvirt(['vm', 'create', 'doomed']);
    await mvirt(['vm', 'start', 'doomed', '--no-wait']);
    const r = await mvirt(['vm', 'rm', '-f', 'doomed']);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(
      spy.requests.slice(-3).map((q) => q.method),
      ['vm.delete', 'vm.kill', 'vm.delete'],
    );
  });

  it("vm disks lists the guest's block devices, asked of its agent", async () => {
    await mvirt(['vm', 'create', 'disks-1']);
    assert.equal((await mvirt(['vm', 'disks', 'disks-1'])).code, 1, 'no agent yet');
    await mvirt(['vm', 'start', 'disks-1']);
    // The fake guest's agent runs on this host's Linux: its /sys/block.
    const r = await mvirt(['vm', 'disks', 'disks-1']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^NAME +SERIAL +SIZE +RO +MOUNT +USED$/m);
    const j = JSON.parse((await mvirt(['--json', 'vm', 'disks', 'disks-1'])).out) as {
      blockDevices: { name: string }[];
    };
    for (const d of j.blockDevices) assert.match(r.out, new RegExp(`^${d.name} `, 'm'));
    await mvirt(['vm', 'rm', '-f', 'disks-1']);
  });

  it('--dry-run: the first change is planned and printed, nothing is made', async () => {
    let r = await mvirt(['vm', 'create', 'plan-1', '--vcpus', '2', '--dry-run']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^Dry run of vm\.create: nothing was changed\.$/m);
    assert.match(r.out, /^ {2}name plan-1 is free$/m);
    assert.match(r.out, /^ {2}vm plan-1: created \(stopped; 2 vCPUs/m);
    assert.deepEqual(spy.requests.at(-1)?.params, { name: 'plan-1', vcpus: 2, dryRun: true });
    assert.equal((await mvirt(['vm', 'get', 'plan-1'])).code, 1, 'no VM was made');

    await mvirt(['vm', 'create', 'plan-1']);
    r = await mvirt(['--json', '--dry-run', 'vm', 'start', 'plan-1']);
    assert.equal(r.code, 0, r.err);
    const plan = JSON.parse(r.out) as { method: string; steps: string[]; commands: unknown[] };
    assert.equal(plan.method, 'vm.start');
    assert.ok(plan.steps.includes('launch hypervisor'));
    r = await mvirt(['vm', 'start', 'plan-1', '--dry-run']);
    assert.match(r.out, /^ {2}\$ \S+ -e /m, 'the launch argv, shell-quoted');
    assert.doesNotMatch(r.err, /starting plan-1/, 'no wait for a start that was not made');
    assert.match((await mvirt(['vm', 'get', 'plan-1'])).out, /^State: +stopped$/m);

    // A refusal is the real call's: exit 1 with its code.
    r = await mvirt(['vm', 'create', 'plan-1', '--dry-run']);
    assert.equal(r.code, 1);
    assert.match(r.err, /VM_EXISTS/);
    assert.equal((await mvirt(['vm', 'rm', 'plan-1'])).code, 0);
  });

  it('operation errors exit 1 with the code and a hint', async () => {
    const r = await mvirt(['vm', 'get', 'ghost']);
    assert.equal(r.code, 1);
    assert.equal(
      r.err,
      'mvirt: no VM with id or name ghost [VM_NOT_FOUND]\nhint: `mvirt vm ls` lists the VMs\n',
    );
    const j = await mvirt(['vm', 'get', 'ghost', '--json']);
    assert.equal(JSON.parse(j.err).error.code, 'VM_NOT_FOUND');
  });

  it('invalid parameters are usage errors (exit 2) caught before sending', async () => {
    const n = spy.requests.length;
    const r = await mvirt(['vm', 'create', 'bad/name']);
    assert.equal(r.code, 2);
    assert.match(r.err, /INVALID_PARAMS/);
    assert.equal(spy.requests.length, n);
  });

  it('a host that never replies is a connection error (exit 3)', async () => {
    const r = await mvirt(['vm', 'kill', 'x', '--host', 'elsewhere', '--timeout', '0.2']);
    assert.equal(r.code, 3);
    assert.match(
      r.err,
      /no reply to vm\.kill from host 'elsewhere'[\s\S]*hint: pick the host with --host/,
    );
  });

  it('events lists the log, and -f follows it until a signal', async () => {
    await mvirt(['vm', 'create', 'ev-1']);
    let r = await mvirt(['events', '--object', 'ev-1']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /audit +\S+ +.*ev-1/);

    const io = memoryIo({ env: env() });
    const following = mvirt(['events', '-f', '--json'], io);
    await io.waitOut('ev-1');
    // Made once the follower has printed its history: its event must arrive live.
    await mvirt(['vm', 'create', 'ev-2']);
    await io.waitOut('ev-2');
    io.signal();
    r = await following;
    assert.equal(r.code, 0, r.err);
    const lines = r.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { id: number; objects: string[] });
    const ids = lines.map((l) => l.id);
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => a - b),
      'in order, each once',
    );
    assert.equal(new Set(ids).size, ids.length);
    const ev2 = result(await j.c.call('vm.get', { vm: 'ev-2' })).id;
    assert.ok(
      lines.some((l) => l.objects.includes(ev2)),
      'the live event is there',
    );
  });

  it('console relays bytes both ways, leaves on Ctrl+a t and restores the tty', async () => {
    await mvirt(['vm', 'create', 'con']);
    await mvirt(['vm', 'start', 'con']);
    const io = memoryIo({ env: env(), tty: true });
    const attached = mvirt(['console', 'con'], io);
    // The fake guest's console echoes what it gets, as a tty would.
    const echoed = io.waitOut('hello');
    await io.waitErr('[attached');
    io.stdin.write('hello');
    await echoed;
    io.stdin.write(Buffer.from([0x01, 0x74]));
    const r = await attached;
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(io.rawModes, [true, false]);
    assert.match(r.err, /\[detached\]/);
  });

  it('console refuses a stopped VM', async () => {
    await mvirt(['vm', 'create', 'cold']);
    const r = await mvirt(['console', 'cold']);
    assert.equal(r.code, 1);
    assert.match(r.err, /cold is stopped: start it first/);
  });
});

describe('mvirt without a reachable daemon', () => {
  it('says where it tried to connect and what to do, exit 3', async () => {
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    await new Promise((r) => srv.close(r));
    const io = memoryIo();
    const code = await runCli(['vm', 'ls', '--broker', `mqtt://127.0.0.1:${port}`], io);
    assert.equal(code, 3);
    assert.match(
      io.errText(),
      new RegExp(
        `cannot connect to mqtt://127.0.0.1:${port}.*is mvirtd running\\? start it with \`mvirtd --data-dir`,
      ),
    );
    assert.match(io.errText(), /hint: point --broker/);
  });
});

describe('console escape and --since parsing', () => {
  it('filters Ctrl+a t across chunks and passes Ctrl+a Ctrl+a as one Ctrl+a', () => {
    const f = escapeFilter();
    assert.deepEqual(f(Buffer.from('ab\x01')), { send: Buffer.from('ab'), exit: false });
    assert.deepEqual(f(Buffer.from('\x01x')), { send: Buffer.from('\x01x'), exit: false });
    assert.deepEqual(f(Buffer.from('\x01q')), { send: Buffer.from('\x01q'), exit: false });
    assert.deepEqual(f(Buffer.from('z\x01t!')), { send: Buffer.from('z'), exit: true });
  });

  it('reads --since as a duration or a time', () => {
    const now = Date.parse('2024-05-10T12:00:00Z');
    assert.equal(parseSince('10m', now), '2024-05-10T11:50:00.000Z');
    assert.equal(parseSince('1d', now), '2024-05-09T12:00:00.000Z');
    assert.equal(parseSince('2024-05-01T00:00:00Z', now), '2024-05-01T00:00:00.000Z');
  });
});
