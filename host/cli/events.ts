/** `mvirt events`: the host's event log, queried and optionally followed live. */
import { MvirtError } from '../../protocol/errors.js';
import type { EventRecord, ParamsOf } from '../../protocol/rpc.js';
import { nameProblem } from '../../protocol/topics.js';
import { UsageError, integer } from './args.js';
import { str, type Command, type Context } from './command.js';
import { EXIT } from './exit.js';
import { inert } from '../../protocol/inert.js';
import { clock, json, jsonLine } from './output.js';

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `--since`: an ISO time, or a duration back from now: 30s, 10m, 2h, 1d. */
export function parseSince(s: string, now: number): string {
  const rel = /^(\d+)([smhd])$/.exec(s);
  if (rel) return new Date(now - Number(rel[1]) * UNITS[rel[2]!]!).toISOString();
  const t = Date.parse(s);
  if (Number.isNaN(t) || !/^\d{4}-\d\d-\d\d/.test(s))
    throw new UsageError(
      `--since wants a time (2024-05-01T12:00:00Z) or a duration (10m, 2h, 1d); got '${s}'`,
      'events',
    );
  return new Date(t).toISOString();
}

/** Who acted, as the event log names it: `user:alice (ctl-1)`, `vm:vm-…`, `mvirtd`. */
export const actorText = (e: EventRecord): string =>
  e.actor === undefined ? '-' : e.actorClient ? `${e.actor} (${e.actorClient})` : e.actor;

export function eventLine(e: EventRecord): string {
  const objs = e.objects?.length ? `  [${e.objects.join(' ')}]` : '';
  return `${clock(e.at)}  ${e.level.padEnd(5)}  ${inert(`${e.component.padEnd(10)}  ${actorText(e).padEnd(12)}  ${e.message}${objs}`)}\n`;
}

/** Oldest first, as logs read. */
const byId = (es: EventRecord[]): EventRecord[] => [...es].sort((a, b) => a.id - b.id);

/** Let `--object web-1` mean the VM's id, which is what events link to. */
async function resolveObject(ctx: Context, ref: string): Promise<string> {
  if (nameProblem(ref) !== null) return ref;
  const c = await ctx.client();
  try {
    return (await c.call('vm.get', { vm: ref })).id;
  } catch (err) {
    if (err instanceof MvirtError && err.code === 'VM_NOT_FOUND') return ref;
    throw err;
  }
}

export const eventsCommands: Command[] = [
  {
    name: 'events',
    summary:
      'Show the event log (every state change and audit entry), optionally following it live.',
    options: {
      object: {
        type: 'string',
        value: 'ID',
        help: 'only events that touch this object (a VM name or id, a job id, …)',
      },
      since: {
        type: 'string',
        value: 'T',
        help: 'from this time: ISO 8601 or a duration back (30s, 10m, 2h, 1d)',
      },
      limit: {
        type: 'string',
        value: 'N',
        help: 'at most N events (the most recent; default 20 with --follow)',
      },
      level: {
        type: 'string',
        value: 'L',
        help: 'only this level: debug, info, warn, error, audit',
      },
      actor: {
        type: 'string',
        value: 'WHO',
        help: 'only what this actor did: user:NAME, unix:NAME, anonymous, vm:ID or mvirtd',
      },
      follow: { type: 'boolean', short: 'f', help: 'keep printing new events until Ctrl-C' },
    },
    examples: [
      'mvirt events --since 1h',
      'mvirt events --object web-1 -f',
      'mvirt events --actor user:alice --level audit',
      'mvirt events -f --json',
    ],
    run: async (ctx, p) => {
      const follow = p.values.follow === true;
      const limit = integer(str(p, 'limit'), '--limit');
      const since = str(p, 'since');
      const level = str(p, 'level');
      if (level !== undefined && !['debug', 'info', 'warn', 'error', 'audit'].includes(level))
        throw new UsageError(
          `--level must be one of debug, info, warn, error, audit; got '${level}'`,
          'events',
        );
      const objRef = str(p, 'object');
      const params: NonNullable<ParamsOf<'events.query'>> = {};
      if (since !== undefined) params.since = parseSince(since, ctx.io.now());
      if (limit !== undefined) params.limit = limit;
      else if (follow && since === undefined) params.limit = 20;
      if (level !== undefined) params.level = level as NonNullable<typeof params.level>;
      const actor = str(p, 'actor');
      if (actor !== undefined) params.actor = actor;
      const c = await ctx.client();
      if (objRef !== undefined) params.objectId = await resolveObject(ctx, objRef);
      const print = (e: EventRecord): void =>
        ctx.out(ctx.globals.json && follow ? jsonLine(e) : eventLine(e));
      if (!follow) {
        const r = await c.call('events.query', params);
        if (ctx.globals.json) ctx.out(json(r));
        else if (r.events.length === 0) ctx.err('no events match\n');
        else byId(r.events).forEach(print);
        return EXIT.OK;
      }
      // Subscribe before querying so nothing falls between history and live;
      // events carry increasing ids, which removes the overlap.
      let lastId = -Infinity;
      let replaying = true;
      const early: EventRecord[] = [];
      const wanted = (e: EventRecord): boolean =>
        (params.objectId === undefined || (e.objects ?? []).includes(params.objectId)) &&
        (params.level === undefined || e.level === params.level) &&
        (params.actor === undefined || e.actor === params.actor);
      const unsubscribe = await c.watchEvents((e) => {
        if (!wanted(e)) return;
        if (replaying) early.push(e);
        else if (e.id > lastId) {
          lastId = e.id;
          print(e);
        }
      });
      const r = await c.call('events.query', params);
      for (const e of byId([...r.events, ...early])) {
        if (e.id > lastId) {
          lastId = e.id;
          print(e);
        }
      }
      replaying = false;
      const code = await new Promise<number>((resolve) => {
        const off = ctx.io.onSignal(() => {
          off();
          resolve(EXIT.OK);
        });
        c.mqtt.once('close', () => {
          off();
          ctx.err('mvirt: lost the connection to the broker\n');
          resolve(EXIT.CONNECTION);
        });
      });
      await unsubscribe();
      return code;
    },
  },
];
