/**
 * The CLI loads what a command needs and no more (host/cli/table.ts): the
 * start and every command module are free of the heavy parts (zod, MQTT.js,
 * cbor-x and the protocol modules built on them), which load when a command
 * connects; and every command of the table is still there, with its help.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { build, type Metafile } from 'esbuild';
import { cliClientId, runCli } from '../../../host/cli/run.js';
import { randomClientId } from '../../../protocol/connect.js';
import { allCommands, commandsFor, FIRST_WORDS } from '../../../host/cli/table.js';
import { COMMAND_WORDS } from '../../../host/cli/words.js';
import { REPO } from '../../../harness/paths.js';
import { memoryIo } from '../../support/cli-io.js';

/** Modules that must load only once a command connects (or follows, or draws `top`). */
const HEAVY = [
  /^node_modules\/(zod|mqtt|mqtt-packet|cbor-x)\//,
  /^protocol\/(client|connect|rpc|records|agent|metrics|plan|codec|validate)\.ts$/,
];

/** The CLI's module graph as esbuild bundles it (scripts/build.mjs), by input file. */
async function moduleGraph(): Promise<Metafile['inputs']> {
  const r = await build({
    absWorkingDir: REPO,
    entryPoints: ['host/cli/main.ts'],
    outdir: path.join(REPO, 'dist/lazy-test'),
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    external: ['cbor-x', 'better-sqlite3'],
    write: false,
    metafile: true,
    logLevel: 'silent',
  });
  return r.metafile.inputs;
}

/** What loading `from` loads before any of its code runs: its static imports, transitively. */
function staticClosure(inputs: Metafile['inputs'], from: string): Set<string> {
  const seen = new Set<string>();
  const walk = (f: string): void => {
    if (seen.has(f)) return;
    seen.add(f);
    for (const i of inputs[f]?.imports ?? []) if (i.kind === 'import-statement') walk(i.path);
  };
  walk(from);
  return seen;
}

const heavyIn = (mods: Set<string>): string[] =>
  [...mods].filter((m) => HEAVY.some((re) => re.test(m)));

describe('mvirt loads lazily', () => {
  it('its start and every command module load no zod, MQTT.js, cbor-x or schemas', async () => {
    const inputs = await moduleGraph();
    assert.deepEqual(heavyIn(staticClosure(inputs, 'host/cli/main.ts')), [], 'at start');
    const table = inputs['host/cli/table.ts']!.imports.filter((i) => i.kind === 'dynamic-import');
    assert.ok(table.length >= 9, 'the table imports its command modules dynamically');
    for (const { path: mod } of table)
      assert.deepEqual(heavyIn(staticClosure(inputs, mod)), [], `with ${mod}`);
    // …and they are there once a command connects.
    const client = staticClosure(inputs, 'protocol/client.ts');
    assert.ok(heavyIn(client).includes('protocol/records.ts'));
  });

  it('every command is in the module its first word names, and answers --help', async () => {
    const all = await allCommands();
    assert.ok(all.length >= 40, `${all.length} commands`);
    assert.equal(new Set(all.map((c) => c.name)).size, all.length, 'no command twice');
    for (const c of all) {
      const first = c.name.split(' ')[0]!;
      assert.ok(FIRST_WORDS.has(first), `${c.name}: '${first}' is not in the table`);
      assert.ok(
        (await commandsFor(first)).some((x) => x.name === c.name),
        `${c.name} is not found by its first word`,
      );
      const io = memoryIo({ env: {} });
      const code = await runCli([...c.name.split(' '), '--help'], io);
      assert.equal(code, 0, `${c.name} --help: ${io.errText()}`);
      assert.ok(io.out().startsWith(`Usage: mvirt ${c.name}`), `${c.name} --help: ${io.out()}`);
    }
  });

  it('the client id is made without a crypto module, as connect.ts makes one', () => {
    const ids = new Set(Array.from({ length: 100 }, () => cliClientId()));
    assert.equal(ids.size, 100);
    for (const id of ids) assert.match(id, /^mvirt-[0-9a-f]{12}$/);
    assert.match(randomClientId(), /^mvirt-[0-9a-f]{12}$/);
  });

  it("the command words start.ts knows are the table's (and help)", () => {
    assert.deepEqual([...COMMAND_WORDS].sort(), [...FIRST_WORDS, 'help'].sort());
  });

  it('mvirt --help lists every command, and a group its own', async () => {
    const all = await allCommands();
    let io = memoryIo({ env: {} });
    assert.equal(await runCli(['--help'], io), 0);
    for (const c of all) assert.match(io.out(), new RegExp(`^  ${c.name} +\\S`, 'm'), c.name);
    io = memoryIo({ env: {} });
    assert.equal(await runCli(['vm', '--help'], io), 0);
    assert.match(io.out(), /^ {2}vm ls +List VMs\.$/m);
    assert.match(io.out(), /^ {2}vm snapshot +/m, 'vm snapshot (snapshot.ts) is in the vm group');
    assert.doesNotMatch(io.out(), /^ {2}pool /m);
    io = memoryIo({ env: {} });
    assert.equal(await runCli(['help', 'vm', 'ls'], io), 0);
    assert.match(io.out(), /^Usage: mvirt vm ls/);
    io = memoryIo({ env: {} });
    assert.equal(await runCli(['nope'], io), 2);
    assert.match(io.errText(), /no command 'nope'/);
  });
});
