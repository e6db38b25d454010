import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MvirtError } from '../../../protocol/errors.js';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UsageError, globalsFrom, parseCommand, splitCommand } from '../../../host/cli/args.js';
import { exitCodeFor } from '../../../host/cli/exit.js';
import { runCli, type ClientFactory } from '../../../host/cli/run.js';
import type { Globals } from '../../../host/cli/args.js';
import { memoryIo } from '../../support/cli-io.js';

/** A client factory that proves usage errors never reach the network. */
const noNetwork: ClientFactory = () => assert.fail('usage errors must not connect');

async function run(argv: string[], env: Record<string, string> = {}) {
  const io = memoryIo({ env });
  const code = await runCli(argv, io, noNetwork);
  return { code, out: io.out(), err: io.errText() };
}

describe('mvirt usage errors: exit code 2 and a message that says what to do', () => {
  const cases: [string[], RegExp][] = [
    [['vm', 'create'], /missing NAME[\s\S]*mvirt vm create --help/],
    [['vm', 'create', 'a', 'b'], /unexpected argument 'b'/],
    [['vm', 'create', 'x', '--vcpus', 'two'], /--vcpus wants a whole number/],
    [['vm', 'create', 'x', '--memory', '0'], /--memory wants a whole number ≥ 1/],
    [['run', '--limit-cpus', 'half', '--', 'true'], /--limit-cpus wants a number of CPUs/],
    [['run', '--limit-cpus', '0', '--', 'true'], /--limit-cpus wants a number of CPUs/],
    [['run', '--limit-memory', '2', '--', 'true'], /--limit-memory wants a whole number ≥ 4/],
    [['vm', 'create', 'x', '--kind', 'forever'], /--kind must be one of service, ephemeral/],
    [['vm', 'create', 'x', '--network', 'wifi'], /--network must be one of none, user, bridge/],
    [['vm', 'create', 'x', '--meta', 'novalue'], /--meta wants KEY=VALUE/],
    [['vm', 'ls', '--bogus'], /unknown option --bogus[\s\S]*mvirt vm ls --help/],
    [['vm', 'ls', '--state', 'napping'], /--state must be one of stopped, starting/],
    [['vm', 'ls', '--broker'], /--broker needs a value/],
    [['vm', 'get'], /missing VM/],
    [['vm', 'nope'], /no command 'vm nope'/],
    [['frobnicate'], /no command 'frobnicate'/],
    [['vm', 'stop', 'x', '--timeout', '-1'], /./],
    [['vm', 'stop', 'x', '--timeout', 'soon'], /--timeout wants seconds/],
    [['info', '--timeout', '0'], /--timeout wants seconds/],
    [['events', '--since', 'yesterday'], /--since wants a time/],
    [['events', '--limit', 'all'], /--limit wants a whole number/],
    [['events', '--level', 'loud'], /--level must be one of/],
    [['console'], /missing VM/],
  ];
  for (const [argv, re] of cases) {
    it(`mvirt ${argv.join(' ')}`, async () => {
      const r = await run(argv);
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, re);
      assert.equal(r.out, '');
    });
  }

  it('mvirt alone prints the usage on stderr with exit 2', async () => {
    const r = await run([]);
    assert.equal(r.code, 2);
    assert.match(r.err, /Usage: mvirt/);
  });

  it('mvirt vm alone lists the vm commands on stderr with exit 2', async () => {
    const r = await run(['vm']);
    assert.equal(r.code, 2);
    assert.match(r.err, /vm create[\s\S]*vm rm/);
  });

  it('--json turns usage errors into JSON on stderr', async () => {
    const r = await run(['vm', 'get', '--json']);
    assert.equal(r.code, 2);
    assert.deepEqual(JSON.parse(r.err), { error: { code: 'USAGE', message: 'missing VM' } });
  });
});

describe('mvirt help', () => {
  for (const argv of [['--help'], ['-h'], ['help'], ['vm', '--help'], ['help', 'vm']]) {
    it(`mvirt ${argv.join(' ')} prints help on stdout, exit 0`, async () => {
      const r = await run(argv);
      assert.equal(r.code, 0);
      assert.match(r.out, /Usage: mvirt/);
    });
  }

  it('each command has help with its options, the global options and examples', async () => {
    const r = await run(['vm', 'create', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.out, /Usage: mvirt vm create NAME \[options\]/);
    assert.match(r.out, /--vcpus N/);
    assert.match(r.out, /--meta K=V \.\.\./);
    assert.match(r.out, /Global options:[\s\S]*--broker URL/);
    assert.match(r.out, /Examples:\n {2}mvirt vm create web-1/);
    const h = await run(['help', 'vm', 'create']);
    assert.equal(h.out, r.out);
  });

  it('vm stop documents its own --timeout instead of the global one', async () => {
    const r = await run(['vm', 'stop', '-h']);
    assert.match(r.out, /graceful shutdown/);
    assert.doesNotMatch(r.out, /seconds to wait for a reply/);
  });
});

describe('global options and environment', () => {
  it('finds command words around global options', () => {
    const depth = (g: string) => (g === 'vm' ? 2 : 1);
    assert.deepEqual(
      splitCommand(['--json', '--host', 'h', 'vm', 'ls', '--state', 'ready'], depth),
      {
        words: ['vm', 'ls'],
        rest: ['--json', '--host', 'h', '--state', 'ready'],
      },
    );
    assert.deepEqual(splitCommand(['vm', '--broker=x', 'get', 'a'], depth), {
      words: ['vm', 'get'],
      rest: ['--broker=x', 'a'],
    });
    assert.deepEqual(splitCommand(['info', '--json'], depth).words, ['info']);
  });

  it('takes options over environment over defaults', async () => {
    const env = {
      MVIRT_BROKER: '/run/mvirt.sock',
      MVIRT_HOST: 'env-host',
      MVIRT_PREFIX: 'p',
      MVIRT_USER: 'alice',
      MVIRT_PASSWORD: 'pw',
    };
    const none = parseCommand('info', [], {});
    assert.deepEqual(await globalsFrom(none.values, {}), {
      broker: 'mqtt://127.0.0.1:1883',
      host: undefined,
      prefix: 'mvirt',
      user: undefined,
      password: undefined,
      cafile: undefined,
      json: false,
      dryRun: false,
      timeoutMs: undefined,
    } satisfies Globals);
    assert.deepEqual(await globalsFrom(none.values, env), {
      broker: '/run/mvirt.sock',
      host: 'env-host',
      prefix: 'p',
      user: 'alice',
      password: 'pw',
      cafile: undefined,
      json: false,
      dryRun: false,
      timeoutMs: undefined,
    });
    const flags = parseCommand('info', ['--host', 'flag-host', '--timeout', '2.5', '--json'], {});
    const g = await globalsFrom(flags.values, env);
    assert.equal(g.host, 'flag-host');
    assert.equal(g.timeoutMs, 2500);
    assert.equal(g.json, true);
  });

  it("finds setup's credential by itself, for its own broker only, and refuses one others can read", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-cred-'));
    try {
      const file = path.join(dir, 'mvirt', 'credentials.json');
      mkdirSync(path.dirname(file));
      const saved = {
        broker: 'mqtt://127.0.0.1:1883',
        username: 'me',
        password: 'pw1',
        cafile: '/ca.pem',
      };
      writeFileSync(file, JSON.stringify(saved), { mode: 0o600 });
      const none = parseCommand('info', [], {});
      const g = await globalsFrom(none.values, { XDG_CONFIG_HOME: dir });
      assert.deepEqual(
        { broker: g.broker, user: g.user, password: g.password, cafile: g.cafile },
        { broker: saved.broker, user: 'me', password: 'pw1', cafile: '/ca.pem' },
      );
      // Another broker: the saved password is not sent there.
      const other = await globalsFrom(none.values, {
        XDG_CONFIG_HOME: dir,
        MVIRT_BROKER: 'mqtt://elsewhere:1',
      });
      assert.equal(other.user, undefined);
      assert.equal(other.password, undefined);
      // An explicit user wins and gets no saved password.
      const bob = await globalsFrom(none.values, { XDG_CONFIG_HOME: dir, MVIRT_USER: 'bob' });
      assert.deepEqual([bob.user, bob.password], ['bob', undefined]);
      chmodSync(file, 0o644);
      await assert.rejects(
        globalsFrom(none.values, { MVIRT_CREDENTIALS: file }),
        (e: Error) => e instanceof UsageError && /chmod 600/.test(e.message),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('hands the resolved globals to the client factory', async () => {
    let seen: Globals | undefined;
    const io = memoryIo({ env: { MVIRT_BROKER: 'mqtt://example:1' } });
    const code = await runCli(['--host', 'h1', 'info', '--timeout', '3'], io, async (g) => {
      seen = g;
      throw new MvirtError('CONNECTION_FAILED', 'cannot connect to mqtt://example:1');
    });
    assert.equal(code, 3);
    assert.equal(seen?.broker, 'mqtt://example:1');
    assert.equal(seen?.host, 'h1');
    assert.equal(seen?.timeoutMs, 3000);
    assert.match(
      io.errText(),
      /cannot connect to mqtt:\/\/example:1 \[CONNECTION_FAILED\]\nhint: point --broker/,
    );
  });
});

describe('exit codes', () => {
  it('maps error codes onto 1, 2 and 3', () => {
    assert.equal(exitCodeFor(new MvirtError('VM_NOT_FOUND', 'x')), 1);
    assert.equal(exitCodeFor(new MvirtError('BOOT_FAILED', 'x')), 1);
    assert.equal(exitCodeFor(new MvirtError('INVALID_PARAMS', 'x')), 2);
    assert.equal(exitCodeFor(new MvirtError('CONFIG_INVALID', 'x')), 2);
    assert.equal(exitCodeFor(new MvirtError('CONNECTION_FAILED', 'x')), 3);
    assert.equal(exitCodeFor(new MvirtError('NOT_AUTHORIZED', 'x')), 3);
    assert.equal(exitCodeFor(new MvirtError('TIMEOUT', 'x')), 1);
    assert.equal(exitCodeFor(new MvirtError('TIMEOUT', 'x', { details: { noReply: true } })), 3);
    assert.equal(exitCodeFor(new Error('bug')), 1);
  });
});
