/**
 * One shape for every command: its words, options, positionals, examples and
 * a run function. Help text is generated from it, so it cannot drift.
 */
import type { MvirtClient } from '../../protocol/client.js';
import type { FleetRequester } from '../../protocol/fleet-client.js';
import type { HostStatus } from '../../protocol/rpc.js';
import {
  GLOBAL_OPTIONS,
  UsageError,
  seconds,
  type Globals,
  type OptionSpec,
  type Parsed,
} from './args.js';
import type { Io } from './io.js';

export interface Context {
  io: Io;
  globals: Globals;
  /** Connects on first use (commands that fail usage checks never touch the network). */
  client(): Promise<MvirtClient>;
  /** Every host's retained status under the prefix, without choosing one (`mvirt hosts`). */
  hosts(): Promise<HostStatus[]>;
  /** A client of this host (`vm ls --all-hosts`), whatever --host says; closed at the end. */
  clientOf(hostId: string): Promise<MvirtClient>;
  /** A requester of the fleet queue on the broker (`--fleet`, docs/fleet.md); closed at the end. */
  fleet(): Promise<FleetRequester>;
  out(s: string): void;
  err(s: string): void;
}

export interface Command {
  /** Words after `mvirt`, e.g. 'vm create'. */
  name: string;
  summary: string;
  /** Positional names: `NAME`, optional `[NAME]`, repeated `NAME...` (or `[NAME...]`). */
  args?: string[];
  /** The usage line after the command words, when `args [options]` does not say it right. */
  usage?: string;
  options?: Record<string, OptionSpec>;
  description?: string;
  examples?: string[];
  run(ctx: Context, p: Parsed): Promise<number>;
}

function optionLines(opts: Record<string, OptionSpec>): string[] {
  const rows = Object.entries(opts).map(([k, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${k}${o.type === 'string' ? ` ${o.value ?? 'VALUE'}` : ''}${o.multiple ? ' ...' : ''}`;
    return [flag, o.help] as const;
  });
  const w = Math.max(...rows.map(([f]) => f.length));
  return rows.map(([f, h]) => `  ${f.padEnd(w)}  ${h}`);
}

export function commandHelp(c: Command): string {
  const lines = [
    c.usage !== undefined
      ? `Usage: mvirt ${c.name} ${c.usage}`
      : `Usage: mvirt ${c.name}${c.args?.length ? ` ${c.args.join(' ')}` : ''}${c.options && Object.keys(c.options).length ? ' [options]' : ''}`,
    '',
    c.summary,
  ];
  if (c.description) lines.push('', c.description);
  if (c.options && Object.keys(c.options).length)
    lines.push('', 'Options:', ...optionLines(c.options));
  const globals = Object.fromEntries(
    Object.entries(GLOBAL_OPTIONS).filter(([k]) => !(c.options && k in c.options)),
  );
  lines.push('', 'Global options:', ...optionLines(globals));
  if (c.examples?.length) lines.push('', 'Examples:', ...c.examples.map((e) => `  ${e}`));
  return lines.join('\n') + '\n';
}

/** Check positional counts against `args` and return them by position. */
export function positionals(c: Command, p: Parsed): string[] {
  const spec = c.args ?? [];
  const required = spec.filter((a) => !a.startsWith('[')).length;
  const variadic = spec.some((a) => /\.\.\.\]?$/.test(a));
  if (p.positionals.length < required) {
    const missing = spec[p.positionals.length]!;
    throw new UsageError(`missing ${missing}`, c.name);
  }
  if (!variadic && p.positionals.length > spec.length)
    throw new UsageError(`unexpected argument '${p.positionals[spec.length]!}'`, c.name);
  return p.positionals;
}

export const str = (p: Parsed, k: string): string | undefined => {
  const v = p.values[k];
  return typeof v === 'string' ? v : undefined;
};

/** A `--<k> S` option of seconds, in whole milliseconds (undefined when not given). */
export const secondsMs = (p: Parsed, k: string): number | undefined => {
  const t = str(p, k);
  return t === undefined ? undefined : Math.round(seconds(t, `--${k}`) * 1000);
};
