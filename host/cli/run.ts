/**
 * The `mvirt` dispatcher: find the command, parse its options, connect on
 * demand, map every failure to an exit code and a message on stderr.
 * Pure with respect to the process (everything through `Io`), so unit tests
 * drive it in-process.
 */
import type { MvirtClient } from '../../protocol/client.js';
import type { FleetRequester } from '../../protocol/fleet-client.js';
import { DEFAULT_BROKER_URL, DEFAULT_TIMEOUT_MS } from '../../protocol/limits.js';
import type { HostStatus } from '../../protocol/rpc.js';
import { readFileSync } from 'node:fs';
import { UsageError, globalsFrom, parseCommand, splitCommand, type Globals } from './args.js';
import { commandHelp, positionals, type Command, type Context } from './command.js';
import { EXIT, exitCodeFor, renderError } from './exit.js';
import { DryRunAnswer, formatPlan } from './plan.js';
import type { Io } from './io.js';
import { allCommands, commandsFor } from './table.js';

const GROUPS: Record<string, string> = {
  vm: 'manage VMs: create, ls, get, start, stop, kill, pause, resume, reboot, rm, attach, detach, disks, snapshot, suspend',
  job: 'inspect jobs: ls (also `mvirt jobs`), get, cancel; start one with `mvirt run`',
  pool: 'keep ready VMs for jobs: set, ls, get, rm',
  volume:
    'disks that outlive VMs: create, ls, get, rm, resize, clone, snapshot, snapshots, restore, rmsnap',
  snapshot:
    'VM snapshots (saved memory and device state): ls, get, rm; take one with `mvirt vm snapshot`',
  info: 'show the host',
  hosts: 'list every host on the broker',
  events: 'show or follow the event log',
  console: 'attach to a VM serial console',
  cp: 'copy files and directories into and out of a VM',
  image: 'µOS images and imported container images: ls, get, rm, build, import',
};

export function mainHelp(commands: readonly Command[]): string {
  const w = Math.max(...commands.map((c) => c.name.length));
  return [
    'Usage: mvirt [global options] COMMAND [options]',
    '',
    'mvirt drives microVMs through mvirtd, over MQTT.',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    'Global options (before or after the command):',
    "  --broker URL   mqtt://HOST:PORT, ws://…, or mvirtd's unix socket path (MVIRT_BROKER)",
    '  --host ID      host id, when several mvirtd share a broker (MVIRT_HOST)',
    '  --prefix P     topic prefix (MVIRT_PREFIX)',
    '  --user U       MQTT user (MVIRT_USER); password from MVIRT_PASSWORD or --password',
    '  --json         machine-readable output',
    '  --timeout S    seconds to wait for a reply',
    '  -h, --help     help for any command: mvirt vm create --help',
    '',
    'Exit codes: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach mvirtd;',
    "  mvirt run: the job's exit code, 124 timed out, 125 lost, 126 not started,",
    '  128+N killed by signal N, 130 cancelled (see `mvirt run --help`).',
    'Docs: docs/cli.md, docs/errors.md',
    '',
  ].join('\n');
}

function groupHelp(group: string, commands: readonly Command[]): string {
  const cmds = commands.filter((c) => c.name.startsWith(`${group} `));
  const w = Math.max(...cmds.map((c) => c.name.length));
  return [
    `Usage: mvirt ${group} COMMAND [options]`,
    '',
    `${group}: ${GROUPS[group] ?? ''}`,
    '',
    'Commands:',
    ...cmds.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    `Run 'mvirt ${group} COMMAND --help' for a command's options and examples.`,
    '',
  ].join('\n');
}

/** Groups whose commands take two words (`mvirt vm ls`). */
const SUBCOMMAND_GROUPS = new Set(['vm', 'job', 'pool', 'volume', 'snapshot', 'image']);

const depthOf = (group: string): number =>
  group === 'help' ? 3 : SUBCOMMAND_GROUPS.has(group) ? 2 : 1;

export interface ClientFactory {
  (g: Globals): Promise<MvirtClient>;
}

/**
 * The protocol's client (MQTT.js, zod, the schemas), loaded by the first
 * command that connects. The connection is opened first and the schemas
 * (10–13 ms) built while mvirtd answers it (connect.ts openBroker). Measured
 * on the 2-core dev machine, Node 20: with the machine busy, mvirtd's CONNACK
 * came 15 ms after the CONNECT (its `ss` for the peer), and 2.5 ms after it
 * with this; on a quiet machine bench/cli.ts saw no difference (vm ls 2.21 and
 * 2.18 × node -e 0).
 */
export const defaultClientFactory: ClientFactory = async (g) => {
  const ca = g.cafile !== undefined ? readCa(g.cafile) : undefined;
  const url = g.broker ?? DEFAULT_BROKER_URL;
  const { openBroker } = await import('../../protocol/connect.js');
  const clientId = cliClientId();
  const { connected, opened } = await openBroker(url, {
    clientId,
    // A command sends a few packets and ends (connect.ts connectBroker).
    writeCache: false,
    ...(g.user !== undefined ? { username: g.user } : {}),
    ...(g.password !== undefined ? { password: g.password } : {}),
    ...(ca !== undefined ? { ca } : {}),
  });
  // createClient takes the rejection; until then it must not count as unhandled.
  connected.catch(() => {});
  // The CONNECT on its way, mvirtd works on it while the schemas are built.
  await opened;
  // Before the schemas are built, which read it: zod then checks objects with
  // its generic code instead of compiling a checker for each object schema at
  // its first use (new Function, which V8's code cache does not keep). A
  // command checks a few records once: in `mvirt vm ls` of 10 VMs, retained
  // status to printed table took 6.2 ms instead of 13 (medians of 14
  // interleaved runs, 2-core dev machine at load 5, Node 20).
  const { config } = await import('zod');
  config({ jitless: true });
  const { createClient } = await import('../../protocol/client.js');
  const client = await createClient({
    url,
    connecting: connected,
    clientId,
    prefix: g.prefix,
    timeoutMs: g.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    ...(g.host !== undefined ? { hostId: g.host } : {}),
  });
  return { ...client, close: () => closeQuickly(client) };
};

/**
 * Close a command's client once its DISCONNECT is written, not once mvirtd
 * has closed the socket in turn: the command's process ends right after
 * (main.ts), and the socket's end needs nothing more of it. Waiting was a
 * round trip to mvirtd at the end of every command, 2.5–3.3 ms of
 * `mvirt vm ls` with the machine busy (2-core dev machine, Node 20).
 */
function closeQuickly(client: MvirtClient): Promise<void> {
  return new Promise((resolve) => {
    const onSend = (packet: { cmd: string }): void => {
      if (packet.cmd !== 'disconnect') return;
      client.mqtt.removeListener('packetsend', onSend);
      // writeToStream has handed it to the socket when this runs.
      process.nextTick(resolve);
    };
    client.mqtt.on('packetsend', onSend);
    void client.close().finally(() => {
      client.mqtt.removeListener('packetsend', onSend);
      resolve();
    });
  });
}

/**
 * `mvirt-<12 hex digits>` as connect.ts randomClientId makes, from
 * Math.random (V8 seeds it from the OS in each process): loading Web Crypto or
 * node:crypto for it was 2 ms of `mvirt vm ls` (2-core dev machine, Node 20).
 * An id must be unique, not secret: the broker binds it to the identity that
 * first used it (host/broker/authenticate.ts), so a guessed one gets a refusal.
 */
export function cliClientId(): string {
  const hex = (): string =>
    Math.floor(Math.random() * 0x1000000)
      .toString(16)
      .padStart(6, '0');
  return `mvirt-${hex()}${hex()}`;
}

/** Every host's retained status under the prefix (`mvirt hosts`): a connection of its own. */
/** A fleet requester on its own connection to the broker; `end` closes both. */
export async function fleetRequester(
  g: Globals,
): Promise<{ requester: FleetRequester; end(): Promise<void> }> {
  const ca = g.cafile !== undefined ? readCa(g.cafile) : undefined;
  const { connectBroker } = await import('../../protocol/connect.js');
  const { createFleetRequester } = await import('../../protocol/fleet-client.js');
  const clientId = cliClientId();
  const mqtt = await connectBroker(g.broker ?? DEFAULT_BROKER_URL, {
    clientId,
    ...(g.user !== undefined ? { username: g.user } : {}),
    ...(g.password !== undefined ? { password: g.password } : {}),
    ...(ca !== undefined ? { ca } : {}),
  });
  const requester = await createFleetRequester({ mqtt, prefix: g.prefix, clientId });
  return {
    requester,
    async end() {
      await requester.close();
      await mqtt.endAsync();
    },
  };
}

export async function discoverFleet(g: Globals): Promise<HostStatus[]> {
  const ca = g.cafile !== undefined ? readCa(g.cafile) : undefined;
  const { connectBroker, discoverHosts } = await import('../../protocol/connect.js');
  const mqtt = await connectBroker(g.broker ?? DEFAULT_BROKER_URL, {
    clientId: cliClientId(),
    ...(g.user !== undefined ? { username: g.user } : {}),
    ...(g.password !== undefined ? { password: g.password } : {}),
    ...(ca !== undefined ? { ca } : {}),
  });
  try {
    return await discoverHosts(mqtt, g.prefix);
  } finally {
    await mqtt.endAsync();
  }
}

function readCa(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new UsageError(`--cafile ${file}: ${(err as Error).message}`);
  }
}

export async function runCli(
  argv: string[],
  io: Io,
  makeClient: ClientFactory = defaultClientFactory,
): Promise<number> {
  if (argv[0] === 'image') {
    // The local builder (--data-dir): images/ owns its argument parsing and exit codes.
    const { isLocalImageCommand, runImage } = await import('./image.js');
    if (isLocalImageCommand(argv.slice(1))) return runImage(argv.slice(1));
  }
  const { words, rest } = splitCommand(argv, depthOf);
  let json = rest.includes('--json');
  let client: MvirtClient | undefined;
  const others: MvirtClient[] = [];
  const ends: (() => Promise<void>)[] = [];
  try {
    if (words[0] === 'help') {
      const target = words.slice(1).join(' ');
      const commands = target === '' ? await allCommands() : await commandsFor(words[1]!);
      const cmd = commands.find((c) => c.name === target);
      if (cmd) io.stdout.write(commandHelp(cmd));
      else if (GROUPS[target]) io.stdout.write(groupHelp(target, commands));
      else if (target === '') io.stdout.write(mainHelp(commands));
      else throw new UsageError(`no command '${target}'`);
      return EXIT.OK;
    }
    const name = words.join(' ');
    const commands = words.length > 0 ? await commandsFor(words[0]!) : [];
    const cmd = commands.find((c) => c.name === name);
    if (!cmd) {
      const wantsHelp = rest.includes('--help') || rest.includes('-h');
      if (words.length === 0) {
        const help = mainHelp(await allCommands());
        if (wantsHelp) {
          io.stdout.write(help);
          return EXIT.OK;
        }
        io.stderr.write(help);
        if (rest[0]?.startsWith('-')) throw new UsageError(`unknown option ${rest[0]}`);
        return EXIT.USAGE;
      }
      const group = words[0]!;
      if (SUBCOMMAND_GROUPS.has(group)) {
        if (words.length === 1 || wantsHelp) {
          (wantsHelp ? io.stdout : io.stderr).write(groupHelp(group, commands));
          return wantsHelp ? EXIT.OK : EXIT.USAGE;
        }
        throw new UsageError(`no command '${group} ${words[1]!}'; see 'mvirt ${group} --help'`);
      }
      throw new UsageError(`no command '${words[0]!}'`);
    }
    let parsed;
    try {
      parsed = parseCommand(cmd.name, rest, cmd.options ?? {});
    } catch (err) {
      // `mvirt run ls -l`: the guest command's options are not ours; say where they go.
      if (err instanceof UsageError && cmd.usage?.includes('-- ') && !rest.includes('--'))
        throw new UsageError(
          `${err.message} (the command goes after --: mvirt ${cmd.name} ${cmd.usage})`,
          cmd.name,
        );
      throw err;
    }
    json = parsed.values.json === true;
    if (parsed.values.help === true) {
      io.stdout.write(commandHelp(cmd));
      return EXIT.OK;
    }
    parsed.positionals = positionals(cmd, parsed);
    // A command with its own --timeout (vm stop, run) means something else by it
    // than the reply wait, and sets its reply waits itself.
    const globals = await globalsFrom(
      cmd.options && 'timeout' in cmd.options
        ? { ...parsed.values, timeout: undefined }
        : parsed.values,
      io.env,
    );
    const ctx: Context = {
      io,
      globals,
      client: async () => {
        client ??= await makeClient(globals);
        if (!globals.dryRun) return client;
        const { dryRunClient } = await import('./dry-run.js');
        return dryRunClient(client);
      },
      hosts: () => discoverFleet(globals),
      fleet: async () => {
        const f = await fleetRequester(globals);
        ends.push(f.end);
        return f.requester;
      },
      clientOf: async (hostId) => {
        const c = await makeClient({ ...globals, host: hostId });
        others.push(c);
        return c;
      },
      out: (s) => void io.stdout.write(s),
      err: (s) => void io.stderr.write(s),
    };
    return await cmd.run(ctx, parsed);
  } catch (err) {
    if (err instanceof DryRunAnswer) {
      io.stdout.write(json ? `${JSON.stringify(err.plan, null, 2)}\n` : formatPlan(err.plan));
      return EXIT.OK;
    }
    io.stderr.write(renderError(err, json));
    if (io.env.MVIRT_DEBUG && err instanceof Error && err.stack) io.stderr.write(`${err.stack}\n`);
    return exitCodeFor(err);
  } finally {
    await client?.close();
    for (const c of others) await c.close();
    for (const end of ends) await end();
  }
}
