/**
 * Wires the agent together: settings + platform → connection, outbox,
 * dispatcher, jobs, telemetry. Everything OS-specific arrives through the
 * Platform, so this runs unchanged in unit tests and in the guest.
 */
import { blockDevicesNow } from './block-devices.js';
import {
  AGENT_PROTOCOL_VERSION,
  AGENT_UP,
  type AgentUpMessage,
  type RestoreReport,
} from '../protocol/agent.js';
import { encodeCbor } from '../protocol/codec.js';
import { topics, type AgentUpKind } from '../protocol/topics.js';
import { formatIssues } from '../protocol/validate.js';
import {
  createConnection,
  DEFAULT_CONNECTION_OPTIONS,
  type ConnectionOptions,
} from './connection.js';
import { AfterReply, createDispatcher, type Handlers } from './dispatch.js';
import { AgentError } from './errors.js';
import { createIdentityKeeper, type Change } from './identity.js';
import { createJobs, DEFAULT_JOB_OPTIONS, type JobOptions } from './jobs.js';
import { createFiles } from './files.js';
import { createOutbox, DEFAULT_OUTBOX_LIMITS, type OutboxLimits, type Outbox } from './outbox.js';
import type { Platform } from './platform/types.js';
import { createPorts } from './ports.js';
import type { Settings } from './settings.js';
import { createTelemetrySampler } from './telemetry.js';
import { AGENT_VERSION } from './version.js';

export interface AgentOptions {
  connection: ConnectionOptions;
  outbox: OutboxLimits;
  jobs: JobOptions;
  /** If the power reply is not acknowledged by then, act anyway. */
  powerReplyWaitMs: number;
  /** Where human-readable log lines go (the µOS console in the guest). */
  console: (line: string) => void;
}

export const DEFAULT_AGENT_OPTIONS: AgentOptions = {
  connection: DEFAULT_CONNECTION_OPTIONS,
  outbox: DEFAULT_OUTBOX_LIMITS,
  jobs: DEFAULT_JOB_OPTIONS,
  powerReplyWaitMs: 3000,
  console: (line) => process.stderr.write(`mvirt-agent: ${line}\n`),
};

export interface Agent {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly connected: boolean;
  readonly outbox: Outbox;
  /** A line for the console and, unless debug, the host's log of this VM. */
  log(level: Level, message: string): void;
}

type Level = 'debug' | 'info' | 'warn' | 'error';

/** A clock still this far off (ms) after a sync's step is worth a warning. */
const CLOCK_WARN_MS = 100;

/** Seconds in a /proc/uptime-style file ("12.34 5.67"), or null. */
export const parseUptime = (text: string | null): number | null => {
  const n = Number(text?.trim().split(/\s+/)[0]);
  return text && Number.isFinite(n) && n >= 0 ? n : null;
};

export function createAgent(
  platform: Platform,
  settings: Settings,
  partial: Partial<AgentOptions> = {},
): Agent {
  const opts: AgentOptions = { ...DEFAULT_AGENT_OPTIONS, ...partial };
  const t = topics(settings.root);
  const outbox = createOutbox(opts.outbox);
  const agentStartS = platform.clock.processStartS();
  let initS = 0;
  let telemetryMs = settings.telemetryMs;
  let telemetryTimer: NodeJS.Timeout | null = null;
  let sampling = false;
  const sampler = createTelemetrySampler(platform);
  /** Who we are: the command line's VM until an identity says otherwise. */
  const keeper = createIdentityKeeper(platform, settings.vmId, (level, m) => log(level, m));
  const vmId = () => keeper.self.vmId;
  /** Goes out with the next hello (until the broker has one). */
  let restored: RestoreReport | undefined;
  /** One sync at a time: each may step the clock in rounds. */
  let syncing: Promise<unknown> = Promise.resolve();

  /** Encode a validated up message. Our own invalid message is a bug: say so, do not send it. */
  function encodeUp<K extends AgentUpKind>(kind: K, msg: AgentUpMessage[K]): Buffer | null {
    // Output chunks are made in one place (jobs.ts: the exec's validated
    // jobId, its own seq counter, the bytes read) and skip the schema: its
    // check took 0.5–0.9 ms a chunk under TCG (against 0.3–0.4 ms for a
    // reply; 2.7 µs against 0.8 µs natively), on every keystroke's echo.
    // The host validates each chunk all the same (host/agent/link.ts).
    if (kind === 'output') return encodeCbor(msg);
    const r = AGENT_UP[kind].safeParse(msg);
    if (r.success) return encodeCbor(msg);
    opts.console(`BUG: invalid ${kind} not sent: ${formatIssues(r.error)}`);
    return null;
  }

  function say<K extends AgentUpKind>(kind: K, msg: AgentUpMessage[K], onSent?: () => void) {
    const payload = encodeUp(kind, msg);
    if (payload) outbox.push(kind, t.agentUp(vmId(), kind), payload, { onSent });
  }

  function log(level: Level, message: string) {
    opts.console(`${level}: ${message}`);
    if (level !== 'debug') say('log', { level, message: message.slice(0, 4096) });
  }

  const jobs = createJobs(
    platform,
    outbox,
    {
      // Buffer is a Uint8Array; the schema's inferred type is narrower (ArrayBuffer-backed).
      output: (c) => say('output', c as AgentUpMessage['output']),
      exit: (e) => say('exit', e),
      log,
    },
    opts.jobs,
  );

  const files = createFiles(platform, log);
  const ports = createPorts(platform, {
    send: (m) => say('port', m as AgentUpMessage['port']),
    log,
  });

  function scheduleTelemetry() {
    if (telemetryTimer) clearInterval(telemetryTimer);
    telemetryTimer = setInterval(() => {
      if (sampling) return;
      sampling = true;
      sampler
        .sample()
        .then((m) => say('telemetry', m))
        .catch((err: Error) => log('warn', `telemetry: ${err.message}`))
        .finally(() => (sampling = false));
    }, telemetryMs);
  }

  /**
   * A new identity generation found before a connect attempt. Another VM id
   * (a fork): this agent's jobs and unsent messages are its source VM's, so
   * they end here; the same one (a resume): they are kept, as after any
   * reconnect.
   */
  function onRestored(c: Change) {
    const moved = c.to.vmId !== c.from.vmId;
    let jobsDropped = 0;
    if (moved) {
      jobsDropped = jobs.drop();
      outbox.discard(`${t.agentRoot(c.from.vmId)}/`);
      outbox.takeDrops();
    }
    keeper.commit(c);
    restored = {
      fromGeneration: c.from.generation ?? 0,
      generation: c.to.generation ?? 0,
      previous: { vmId: c.from.vmId, hostname: c.previousHostname.slice(0, 64) },
      entropyBytes: c.entropyBytes,
      network: c.network,
      jobsDropped,
    };
    const who = moved
      ? `now ${c.to.vmId} (was ${c.from.vmId}; ${jobsDropped} running jobs ended)`
      : `still ${c.to.vmId}`;
    log(
      'info',
      `restored: identity generation ${restored.fromGeneration} → ${restored.generation}, ${who}`,
    );
    for (const w of c.warnings) log('warn', `restore: ${w}`);
  }

  async function sync(clockStepMs: number, entropy: Uint8Array) {
    const t0 = performance.now();
    const nowMs = platform.clock.now() + clockStepMs;
    await platform.mixEntropy(entropy).catch((err: Error) => {
      throw new AgentError('INTERNAL', `cannot mix entropy into the kernel pool: ${err.message}`);
    });
    const errorMs = await platform
      .setClock(nowMs + (performance.now() - t0))
      .catch((err: Error) => {
        throw new AgentError('INTERNAL', `cannot set the clock: ${err.message}`);
      });
    if (Math.abs(errorMs) > CLOCK_WARN_MS) {
      log(
        'warn',
        `sync: the clock is still ${Math.round(errorMs)} ms off the host's after the step`,
      );
    }
    // The restore's NIC change runs beside the reconnect: the host waits for it here.
    const nic = await keeper.network();
    if (nic.error) log('warn', `restore: network: ${nic.error}`);
    return { clockStepMs, entropyBytes: entropy.length, network: nic.result };
  }

  const handlers: Handlers = {
    exec: (m) => jobs.exec(m),
    stdin: (m) => jobs.stdin(m),
    signal: (m) => jobs.signal(m),
    resize: (m) => jobs.resize(m),
    fsWrite: (m) => files.write(m),
    fsRead: (m) => files.read(m),
    fsOp: (m) => files.op(m.op),
    ping: (m) => ({
      ...(m.data === undefined ? {} : { data: m.data }),
      wallMs: platform.clock.now(),
    }),
    blockDevices: async () => ({ blockDevices: await blockDevicesNow(platform) }),
    port: (m) => ports.handle(m),
    sync: (m) => {
      const run = syncing.then(() => sync(m.stepMs, m.entropy));
      syncing = run.catch(() => undefined);
      return run;
    },
    configure: (m) => {
      if (m.telemetryIntervalMs !== undefined) {
        telemetryMs = m.telemetryIntervalMs;
        scheduleTelemetry();
      }
      return { telemetryIntervalMs: telemetryMs };
    },
    power: (m) =>
      // Reply first: once init starts shutting down, nothing more gets out.
      new AfterReply({ action: m.action }, () => {
        platform.power(m.action).catch((err: Error) => log('error', `power: ${err.message}`));
      }),
  };

  const dispatch = createDispatcher(handlers, {
    reply: (body, afterSent) => {
      if (!afterSent) return say('reply', body);
      // Act once the broker has the reply, or after a bounded wait if it never
      // acknowledges (a dead channel must not block a shutdown).
      let done = false;
      const run = () => {
        if (done) return;
        done = true;
        clearTimeout(fallback);
        afterSent();
      };
      const fallback = setTimeout(run, opts.powerReplyWaitMs);
      say('reply', body, run);
    },
    log,
  });

  const connection = createConnection(
    platform,
    settings,
    outbox,
    {
      async prepare() {
        try {
          const change = await keeper.check();
          if (change) onRestored(change);
        } catch (err) {
          log('warn', `identity: ${(err as Error).message}`);
        }
      },
      who: () => ({ vmId: keeper.self.vmId, token: keeper.self.token }),
      async greet(connectedS) {
        const { generation } = keeper.self;
        const { release, hostname } = platform.uname();
        const hello = encodeUp('hello', {
          protocol: AGENT_PROTOCOL_VERSION,
          agentVersion: AGENT_VERSION,
          kernel: release.slice(0, 256),
          hostname: hostname.slice(0, 256),
          pid: process.pid,
          boot: { initS, agentStartS, connectedS },
          jobs: jobs.known().slice(-1024),
          ...(generation === undefined ? {} : { generation }),
          ...(restored ? { restored } : {}),
        });
        const ready = encodeUp('ready', { at: platform.clock.now() });
        const out = [];
        if (hello) out.push({ topic: t.agentUp(vmId(), 'hello'), payload: hello });
        if (ready) out.push({ topic: t.agentUp(vmId(), 'ready'), payload: ready });
        return out;
      },
      onMessage(topic, payload) {
        const downPrefix = `${t.agentRoot(vmId())}/down/`;
        if (!topic.startsWith(downPrefix)) {
          log('warn', `message on unexpected topic ${topic.slice(0, 256)}`);
          return;
        }
        void dispatch(topic.slice(downPrefix.length), payload);
      },
      onConnected() {
        opts.console('connected');
        platform.prepare?.();
        // The broker has acknowledged the hello that carried it.
        restored = undefined;
        const d = outbox.takeDrops();
        if (d.telemetry || d.log || d.failed) {
          log(
            'warn',
            `while disconnected dropped ${d.telemetry} telemetry, ${d.log} log messages; ${d.failed} failed sends`,
          );
        }
      },
      onDisconnected() {
        opts.console('disconnected; reconnecting');
        // The host drops its side of every stream with the session: so do we,
        // with what we had not sent yet.
        ports.closeAll();
        outbox.discard(t.agentUp(vmId(), 'port'));
      },
      log,
    },
    opts.connection,
  );

  return {
    async start() {
      initS = parseUptime(await platform.readText(settings.initUptimePath)) ?? 0;
      await keeper.adopt();
      scheduleTelemetry();
      connection.start();
    },
    async stop() {
      if (telemetryTimer) clearInterval(telemetryTimer);
      telemetryTimer = null;
      jobs.killAll();
      await files.closeAll();
      ports.closeAll();
      await connection.stop();
    },
    get connected() {
      return connection.connected;
    },
    outbox,
    log,
  };
}
