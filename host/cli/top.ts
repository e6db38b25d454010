/**
 * `mvirt top`: a live view of the host and its VMs (state, CPU, memory, load,
 * network rates), redrawn from the topics: retained VM state, telemetry and
 * the host status. Nothing polls: a frame is drawn when something changed, at
 * most once per --interval. On a terminal each frame replaces the previous
 * one; piped, frames follow each other (like `top -b`).
 */
import type { VmTelemetry } from '../../protocol/metrics.js';
import type { HostStatus, VmRecord } from '../../protocol/records.js';
import { isActiveVm } from '../../protocol/states.js';
import { UsageError, integer, oneOf } from './args.js';
import { str, type Command } from './command.js';
import { EXIT } from './exit.js';
import { jsonLine, mib, table } from './output.js';

const SORTS = ['cpu', 'mem', 'name', 'state'] as const;
type Sort = (typeof SORTS)[number];

export interface TopVm {
  id: string;
  name: string;
  state: VmRecord['state'];
  vcpus: number;
  memoryMiB: number;
  cpuPercent?: number;
  memUsedMiB?: number;
  load1?: number;
  uptimeS?: number;
  /** Bytes per second between the last two samples. */
  rxPerS?: number;
  txPerS?: number;
}

export interface TopFrame {
  at: string;
  host: HostStatus | null;
  vms: TopVm[];
}

/** VM records and telemetry as they arrive, folded into rows. */
export function createTopState() {
  const vms = new Map<string, VmRecord>();
  const tele = new Map<string, { cur: VmTelemetry; prev?: VmTelemetry }>();
  let host: HostStatus | null = null;

  return {
    setVm(id: string, rec: VmRecord | null): void {
      if (rec) vms.set(id, rec);
      else vms.delete(id);
      if (!rec || !isActiveVm(rec.state)) tele.delete(id);
    },
    addTelemetry(t: VmTelemetry): void {
      const old = tele.get(t.vmId);
      tele.set(t.vmId, { cur: t, ...(old ? { prev: old.cur } : {}) });
    },
    setHost(s: HostStatus): void {
      host = s;
    },
    frame(sort: Sort, now: number): TopFrame {
      const rows: TopVm[] = [...vms.values()].map((v) => {
        const row: TopVm = {
          id: v.id,
          name: v.name,
          state: v.state,
          vcpus: v.vcpus,
          memoryMiB: v.memoryMiB,
        };
        const t = tele.get(v.id);
        if (!t || !isActiveVm(v.state)) return row;
        const { cur, prev } = t;
        Object.assign(row, {
          cpuPercent: cur.cpuPercent,
          memUsedMiB: cur.memUsedMiB,
          load1: cur.load1,
          uptimeS: cur.uptimeS,
        });
        const dt = prev ? (cur.receivedAt - prev.receivedAt) / 1000 : 0;
        if (prev && dt > 0 && cur.netRxBytes >= prev.netRxBytes) {
          row.rxPerS = (cur.netRxBytes - prev.netRxBytes) / dt;
          row.txPerS = Math.max(0, cur.netTxBytes - prev.netTxBytes) / dt;
        }
        return row;
      });
      const by: Record<Sort, (a: TopVm, b: TopVm) => number> = {
        cpu: (a, b) => (b.cpuPercent ?? -1) - (a.cpuPercent ?? -1),
        mem: (a, b) => (b.memUsedMiB ?? -1) - (a.memUsedMiB ?? -1),
        state: (a, b) => a.state.localeCompare(b.state),
        name: () => 0,
      };
      rows.sort((a, b) => by[sort](a, b) || a.name.localeCompare(b.name));
      return { at: new Date(now).toISOString(), host, vms: rows };
    },
  };
}

const num = (v: number | undefined, digits = 0): string =>
  v === undefined ? '-' : v.toFixed(digits);

function rate(bps: number | undefined): string {
  if (bps === undefined) return '-';
  if (bps < 1024) return `${bps.toFixed(0)} B/s`;
  if (bps < 1024 * 1024) return `${(bps / 1024).toFixed(1)} KiB/s`;
  return `${(bps / 1048576).toFixed(1)} MiB/s`;
}

function uptime(s: number | undefined): string {
  if (s === undefined) return '-';
  if (s < 120) return `${Math.floor(s)}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172_800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

/** One frame as text: a host line, a VM count line, the VM table. */
export function renderTop(f: TopFrame): string {
  const h = f.host;
  const fig = h?.figures;
  const states = new Map<string, number>();
  for (const v of f.vms) states.set(v.state, (states.get(v.state) ?? 0) + 1);
  const head = [
    `mvirt top — ${h?.hostId ?? '?'} ${h ? (h.online ? 'online' : 'OFFLINE') : ''}  ${f.at.slice(11, 19)}`,
    fig
      ? `host: CPU ${fig.cpuPercent.toFixed(0)}%  mem ${mib(Math.round(fig.memUsedMiB))} / ${mib(Math.round(fig.memTotalMiB))}  load ${fig.load1.toFixed(2)}` +
        (h?.allocated
          ? `  allocated ${h.allocated.vcpus} vCPU, ${mib(h.allocated.memoryMiB)}`
          : '') +
        (h?.broker
          ? `  broker ${h.broker.clients} clients, ${h.broker.inPerSec.toFixed(0)} msg/s`
          : '')
      : 'host: waiting for status…',
    `VMs: ${f.vms.length}${states.size ? ` (${[...states].map(([s, n]) => `${n} ${s}`).join(', ')})` : ''}`,
  ];
  const rows = f.vms.map((v) => [
    v.name,
    v.state,
    String(v.vcpus),
    mib(v.memoryMiB),
    num(v.cpuPercent),
    v.memUsedMiB === undefined ? '-' : mib(Math.round(v.memUsedMiB)),
    num(v.load1, 2),
    uptime(v.uptimeS),
    rate(v.rxPerS),
    rate(v.txPerS),
  ]);
  const right = [
    'left',
    'left',
    'right',
    'right',
    'right',
    'right',
    'right',
    'right',
    'right',
    'right',
  ] as const;
  return `${head.join('\n')}\n\n${table(
    ['name', 'state', 'vcpu', 'memory', 'cpu%', 'mem used', 'load', 'up', 'net rx', 'net tx'],
    rows,
    [...right],
  )}`;
}

const CLEAR = '\x1b[H\x1b[2J';

export const topCommands: Command[] = [
  {
    name: 'top',
    summary:
      'Live view of the VMs: state, CPU, memory, load and network, redrawn as telemetry arrives.',
    options: {
      interval: {
        type: 'string',
        value: 'S',
        help: 'redraw at most every S seconds (default 1; 0: on every change)',
      },
      iterations: {
        type: 'string',
        short: 'n',
        value: 'N',
        help: 'stop after N frames (default: until Ctrl-C)',
      },
      sort: { type: 'string', value: 'KEY', help: `sort by ${SORTS.join(', ')} (default cpu)` },
    },
    description:
      'Frames are drawn from the topics mvirtd publishes (VM state, vm/+/telemetry, status); how often telemetry ' +
      'arrives is set by mvirtd --telemetry-interval-ms. With --json, each frame is one JSON line.',
    examples: ['mvirt top', 'mvirt top --sort mem', 'mvirt top -n 1 --json'],
    run: async (ctx, p) => {
      const intervalS = integer(str(p, 'interval'), '--interval', 0) ?? 1;
      const iterations = integer(str(p, 'iterations'), '--iterations');
      const sort = oneOf(str(p, 'sort'), SORTS, '--sort') ?? 'cpu';
      if (intervalS > 3600) throw new UsageError('--interval: at most 3600 seconds', 'top');
      const c = await ctx.client();
      const s = createTopState();
      const tty = ctx.io.stdout.isTTY === true && !ctx.globals.json;
      let frames = 0;
      let last = 0;
      let timer: NodeJS.Timeout | undefined;
      let ready = false;
      let finished = false;
      let resolveDone: (code: number) => void = () => undefined;
      const done = new Promise<number>((resolve) => (resolveDone = resolve));
      const finish = (code: number): void => {
        finished = true;
        resolveDone(code);
      };

      const draw = (): void => {
        timer = undefined;
        if (finished) return;
        last = ctx.io.now();
        const f = s.frame(sort, last);
        if (ctx.globals.json) ctx.out(jsonLine(f));
        else ctx.out(tty ? CLEAR + renderTop(f) : (frames > 0 ? '\n' : '') + renderTop(f));
        if (iterations !== undefined && ++frames >= iterations) finish(EXIT.OK);
      };
      /** Something changed: draw now, or once the interval since the last frame is over. */
      const changed = (): void => {
        if (!ready || finished || timer) return;
        const wait = Math.max(0, last + intervalS * 1000 - ctx.io.now());
        timer = setTimeout(draw, wait);
      };

      // The schemas (zod) load with the view, not with this module (`mvirt --help` loads it too).
      const [{ VmTelemetry }, { HostStatus, VmRecord }] = await Promise.all([
        import('../../protocol/metrics.js'),
        import('../../protocol/records.js'),
      ]);
      const root = c.topics;
      const unsubs = [
        await c.subscribe(root.vmState('+'), (topic, payload) => {
          const id = topic.split('/').at(-2)!;
          if (payload.length === 0) s.setVm(id, null);
          else {
            const r = VmRecord.safeParse(JSON.parse(payload.toString()));
            if (!r.success) return; // as with telemetry: skip what the schema does not know
            s.setVm(id, r.data);
          }
          changed();
        }),
        await c.subscribe(root.vmTelemetry('+'), (_t, payload) => {
          const r = VmTelemetry.safeParse(JSON.parse(payload.toString()));
          if (!r.success) return; // a newer daemon's fields: skip rather than crash the view
          s.addTelemetry(r.data);
          changed();
        }),
        await c.subscribe(root.status, (_t, payload) => {
          const r = HostStatus.safeParse(JSON.parse(payload.toString()));
          if (r.success) s.setHost(r.data);
          changed();
        }),
      ];
      // The list is the truth at this moment (retained states may still be on their way).
      for (const v of (await c.call('vm.list')).vms) s.setVm(v.id, v);
      ready = true;
      if (tty) ctx.out('\x1b[?25l'); // hide the cursor while redrawing
      draw();
      const off = ctx.io.onSignal(() => finish(EXIT.OK));
      const onClose = (): void => {
        ctx.err('mvirt: lost the connection to the broker\n');
        finish(EXIT.CONNECTION);
      };
      c.mqtt.once('close', onClose);
      const code = await done;
      off();
      c.mqtt.off('close', onClose);
      clearTimeout(timer);
      if (tty) ctx.out('\x1b[?25h');
      for (const u of unsubs) await u();
      return code;
    },
  },
];
