/**
 * Argument parsing on node:util parseArgs: global options may stand before or
 * after the command words (`mvirt --json vm ls` = `mvirt vm ls --json`);
 * every mistake becomes a UsageError (exit code 2) that names the fix.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { DEFAULT_BROKER_URL, DEFAULT_TIMEOUT_MS } from '../../protocol/limits.js';
import { DEFAULT_PREFIX } from '../../protocol/topics.js';
import { credentialsPath, loadCredentials } from './credentials.js';
import type { Io } from './io.js';

export class UsageError extends Error {
  /** The command whose help to point at, e.g. 'vm create'. */
  readonly command: string | undefined;
  constructor(message: string, command?: string) {
    super(message);
    this.name = 'UsageError';
    this.command = command;
  }
}

type OptionType = { type: 'string' | 'boolean'; short?: string; multiple?: boolean };
export type OptionSpec = OptionType & { help: string; value?: string };

export const GLOBAL_OPTIONS = {
  broker: {
    type: 'string',
    value: 'URL',
    help: `broker: mqtt://, mqtts://, ws://, wss:// or a unix socket path (env MVIRT_BROKER; default ${DEFAULT_BROKER_URL})`,
  },
  host: {
    type: 'string',
    value: 'ID',
    help: 'host id of the mvirtd to talk to (env MVIRT_HOST; default: the only online host)',
  },
  prefix: {
    type: 'string',
    value: 'P',
    help: `topic prefix (env MVIRT_PREFIX; default ${DEFAULT_PREFIX})`,
  },
  user: { type: 'string', value: 'U', help: 'MQTT user name (env MVIRT_USER)' },
  password: {
    type: 'string',
    value: 'PW',
    help: 'MQTT password (env MVIRT_PASSWORD, which stays out of `ps`)',
  },
  cafile: {
    type: 'string',
    value: 'FILE',
    help: 'CA certificate (PEM) to trust for mqtts:// and wss:// (env MVIRT_CAFILE)',
  },
  json: { type: 'boolean', help: 'print results as JSON (the RPC result as the daemon sent it)' },
  'dry-run': {
    type: 'boolean',
    help: "show what the command's change would do (checks, steps, commands, files) and change nothing",
  },
  timeout: {
    type: 'string',
    value: 'S',
    help: `seconds to wait for a reply (default ${DEFAULT_TIMEOUT_MS / 1000}; longer for vm start/stop)`,
  },
  help: { type: 'boolean', short: 'h', help: 'show help' },
} as const satisfies Record<string, OptionSpec>;

export interface Globals {
  broker: string;
  host: string | undefined;
  prefix: string;
  user: string | undefined;
  password: string | undefined;
  /** CA file for TLS brokers. */
  cafile: string | undefined;
  json: boolean;
  /** --dry-run: the first change is planned, not made (plan.ts). */
  dryRun: boolean;
  /** Reply timeout in ms when given with --timeout; commands pick their own default otherwise. */
  timeoutMs: number | undefined;
}

/** Command words and the remaining arguments (global options kept in place). */
export function splitCommand(
  argv: string[],
  depthOf: (group: string) => number,
): {
  words: string[];
  rest: string[];
} {
  const rest: string[] = [];
  const words: string[] = [];
  let i = 0;
  const skipGlobals = (): void => {
    while (i < argv.length) {
      const a = argv[i]!;
      const name = /^--([^=]+)/.exec(a)?.[1] ?? (a === '-h' ? 'help' : undefined);
      const spec =
        name !== undefined ? GLOBAL_OPTIONS[name as keyof typeof GLOBAL_OPTIONS] : undefined;
      if (!spec) return;
      rest.push(a);
      if (spec.type === 'string' && !a.includes('=') && i + 1 < argv.length) rest.push(argv[++i]!);
      i++;
    }
  };
  skipGlobals();
  if (i < argv.length && !argv[i]!.startsWith('-')) {
    const group = argv[i++]!;
    words.push(group);
    for (let d = 1; d < depthOf(group); d++) {
      skipGlobals();
      if (i < argv.length && !argv[i]!.startsWith('-')) words.push(argv[i++]!);
    }
  }
  rest.push(...argv.slice(i));
  return { words, rest };
}

export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
  /** The arguments after `--`, untouched (also the tail of `positionals`); undefined without `--`. */
  dashDash?: string[];
}

/** parseArgs with the global options added and its errors turned into UsageErrors. */
export function parseCommand(
  command: string,
  args: string[],
  options: Record<string, OptionSpec>,
): Parsed {
  const all: ParseArgsConfig['options'] = {};
  const merged: Record<string, OptionSpec> = { ...GLOBAL_OPTIONS, ...options };
  for (const [k, v] of Object.entries(merged)) {
    all[k] = {
      type: v.type,
      ...(v.short ? { short: v.short } : {}),
      ...(v.multiple ? { multiple: true } : {}),
    };
  }
  try {
    const r = parseArgs({ args, options: all, allowPositionals: true, strict: true, tokens: true });
    const end = r.tokens.find((t) => t.kind === 'option-terminator');
    return {
      values: r.values as Parsed['values'],
      positionals: r.positionals,
      ...(end ? { dashDash: args.slice(end.index + 1) } : {}),
    };
  } catch (err) {
    const e = err as Error & { code?: string };
    const opt = /'(-[^']*)'/.exec(e.message)?.[1];
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION')
      throw new UsageError(`unknown option ${opt ?? e.message}`, command);
    if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE')
      throw new UsageError(
        /argument missing/.test(e.message)
          ? `option ${/--[\w-]+/.exec(e.message)?.[0] ?? opt ?? ''} needs a value`
          : e.message,
        command,
      );
    throw new UsageError(e.message, command);
  }
}

export async function globalsFrom(values: Parsed['values'], env: Io['env']): Promise<Globals> {
  const str = (k: string): string | undefined => {
    const v = values[k];
    return typeof v === 'string' ? v : undefined;
  };
  const t = str('timeout');
  const user = str('user') ?? nonEmpty(env.MVIRT_USER);
  const password = str('password') ?? nonEmpty(env.MVIRT_PASSWORD);
  const broker = str('broker') ?? nonEmpty(env.MVIRT_BROKER);
  // No login given: the credential setup.sh made for this user, if any.
  const saved = user === undefined ? await loadCredentials(credentialsPath(env)) : null;
  // A saved credential is for its own broker: not sent to another one.
  const useSaved = saved !== null && (broker === undefined || broker === saved.broker);
  return {
    broker: broker ?? (useSaved ? saved.broker : undefined) ?? DEFAULT_BROKER_URL,
    host: str('host') ?? nonEmpty(env.MVIRT_HOST),
    prefix: str('prefix') ?? nonEmpty(env.MVIRT_PREFIX) ?? DEFAULT_PREFIX,
    user: user ?? (useSaved ? saved.username : undefined),
    password: password ?? (useSaved && user === undefined ? saved.password : undefined),
    cafile: str('cafile') ?? nonEmpty(env.MVIRT_CAFILE) ?? (useSaved ? saved.cafile : undefined),
    json: values.json === true,
    dryRun: values['dry-run'] === true,
    timeoutMs: t === undefined ? undefined : seconds(t, '--timeout') * 1000,
  };
}

const nonEmpty = (s: string | undefined): string | undefined => (s ? s : undefined);

/** A positive number of seconds (fractions allowed). */
export function seconds(s: string, what: string): number {
  const n = Number(s);
  if (!/^\d+(\.\d+)?$/.test(s) || !(n > 0))
    throw new UsageError(`${what} wants seconds, got '${s}'`);
  return n;
}

export function integer(s: string | undefined, what: string, min = 1): number | undefined {
  if (s === undefined) return undefined;
  if (!/^\d+$/.test(s) || Number(s) < min)
    throw new UsageError(`${what} wants a whole number${min > 0 ? ` ≥ ${min}` : ''}, got '${s}'`);
  return Number(s);
}

export function oneOf<T extends string>(
  s: string | undefined,
  allowed: readonly T[],
  what: string,
): T | undefined {
  if (s === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(s))
    throw new UsageError(`${what} must be one of ${allowed.join(', ')}; got '${s}'`);
  return s as T;
}
