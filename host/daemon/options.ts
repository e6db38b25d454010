/**
 * mvirtd's command line. Every problem is a CONFIG_INVALID error that names
 * the option and says what to do, because an operator reads it at start-up.
 */
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { MvirtError } from '../../protocol/errors.js';
import { DEFAULT_PREFIX, nameProblem } from '../../protocol/topics.js';

export interface DaemonOptions {
  dataDir: string;
  imagesDir: string;
  /** `host:port` or false (no TCP listener). */
  listen: string | false;
  /** `host:port` or false. */
  wsListen: string | false;
  /** HTTP listener (/metrics, the dashboard, MQTT over WebSocket on /mqtt): `host:port` or false. */
  http: string | false;
  /** Agents report telemetry this often; undefined: the agent's default (5 s). */
  telemetryIntervalMs?: number;
  /** 1-minute roll-ups are kept this long (10-second ones one hour). */
  metricsRetentionHours: number;
  /** Unix socket path or false; default `<data-dir>/mvirt.sock`. */
  unixSocket: string | false;
  hostId: string;
  prefix: string;
  bridge: string;
  maxVms: number;
  maxVcpus: number;
  maxMemoryMiB: number;
  defaultVcpus: number;
  defaultMemoryMiB: number;
  defaultImage: string;
  defaultBackend: string;
  bootTimeoutMs: number;
  stopTimeoutMs: number;
  /** Stored output per job at most (oldest chunks dropped beyond it). */
  jobOutputBytes: number;
  /** A job without a target goes to this pool when it exists. */
  defaultPool?: string;
  /** How long a job survives its agent being away before it is lost. */
  jobAgentGraceMs: number;
  usersFile?: string;
  /** Anonymous controllers over loopback/unix; default: only when no users file is given. */
  allowAnonymous: boolean;
  stopVmsOnExit: boolean;
  logLevel: string;
  eventsRetentionDays: number;
  eventsMaxRows: number;
  statusIntervalMs: number;
  help: boolean;
  version: boolean;
}

export const USAGE = `usage: mvirtd [options]

  --data-dir DIR            state folder: mvirt.db, images/, vm/<id>/ (default /var/lib/mvirt)
  --images-dir DIR          built images (default <data-dir>/images)
  --listen HOST:PORT|off    MQTT over TCP for controllers (default 127.0.0.1:1883)
  --ws-listen HOST:PORT|off MQTT over WebSocket, e.g. 127.0.0.1:1884 (default off)
  --http HOST:PORT|off      HTTP: /metrics (Prometheus), the dashboard on /, MQTT over
                            WebSocket on /mqtt (default 127.0.0.1:8180)
  --unix-socket PATH|off    MQTT over a unix socket (default <data-dir>/mvirt.sock)
  --host-id ID              this host's id in topics (default: the hostname)
  --prefix P                topic prefix (default mvirt)
  --bridge NAME             network bridge for VMs (default mvirt0)
  --max-vms N               VMs that may run at once (default 64)
  --max-vcpus N             vCPUs that may be allocated (default 4 × host CPUs)
  --max-memory-mib N        guest memory that may be allocated (default 90% of host memory)
  --default-vcpus N         vCPUs of a VM created without vcpus (default 1)
  --default-memory-mib N    memory of a VM created without memoryMiB (default 256)
  --default-image NAME      image of a VM created without image (default default)
  --default-backend NAME    hypervisor backend (default qemu)
  --boot-timeout-ms N       time for the agent to say ready (default 120000)
  --stop-timeout-ms N       graceful stop budget before SIGTERM (default 30000)
  --job-output-bytes N      output stored per job; the oldest is dropped beyond it
                            (default 8388608 = 8 MiB)
  --default-pool NAME       where jobs without vm/image/pool go when that pool exists
                            (default: an ephemeral VM of the default image)
  --job-agent-grace-ms N    a job whose agent stays away this long is lost (default 60000)
  --users FILE              controller users: {"users":[{"username","passwordHash"}]}
  --allow-anonymous         anonymous controllers over loopback and the unix socket
                            (the default when no --users file is given)
  --stop-vms-on-exit        stop every VM when mvirtd exits (default: leave them running)
  --events-retention-days N keep events this many days (default 30)
  --events-max-rows N       keep at most this many events (default 100000)
  --telemetry-interval-ms N agents report telemetry this often (default: 5000, the agent's)
  --metrics-retention-hours N
                            keep 1-minute metric roll-ups this long (default 24;
                            10-second roll-ups are kept one hour)
  --log-level LEVEL         trace, debug, info, audit, warn, error (default info)
  --help, --version
`;

export const DEFAULT_HTTP = '127.0.0.1:8180';

const LOG_LEVELS = ['trace', 'debug', 'info', 'audit', 'warn', 'error', 'fatal', 'silent'];

function bad(option: string, problem: string): MvirtError {
  return new MvirtError('CONFIG_INVALID', `--${option}: ${problem}`, { details: { option } });
}

function int(
  v: string | undefined,
  option: string,
  dflt: number,
  min: number,
  max: number,
): number {
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v)) throw bad(option, `expected a whole number, got ${JSON.stringify(v)}`);
  const n = Number(v);
  if (n < min || n > max) throw bad(option, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

function hostPort(v: string | undefined, option: string, dflt: string | false): string | false {
  if (v === undefined) return dflt;
  if (v === 'off' || v === 'none') return false;
  const m = /^(?:\[[^\]]+\]|[^:[\]]*):(\d{1,5})$/.exec(v);
  if (!m || Number(m[1]) > 65535) {
    throw bad(option, `expected HOST:PORT (e.g. 127.0.0.1:1883) or off, got ${JSON.stringify(v)}`);
  }
  return v;
}

function name(v: string | undefined, option: string, dflt: string): string {
  const s = v ?? dflt;
  const p = nameProblem(s);
  if (p) throw bad(option, `${JSON.stringify(s)} ${p}`);
  return s;
}

export function parseOptions(argv: string[], env: NodeJS.ProcessEnv = process.env): DaemonOptions {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        'data-dir': { type: 'string' },
        'images-dir': { type: 'string' },
        listen: { type: 'string' },
        'ws-listen': { type: 'string' },
        http: { type: 'string' },
        'telemetry-interval-ms': { type: 'string' },
        'metrics-retention-hours': { type: 'string' },
        'unix-socket': { type: 'string' },
        'host-id': { type: 'string' },
        prefix: { type: 'string' },
        bridge: { type: 'string' },
        'max-vms': { type: 'string' },
        'max-vcpus': { type: 'string' },
        'max-memory-mib': { type: 'string' },
        'default-vcpus': { type: 'string' },
        'default-memory-mib': { type: 'string' },
        'default-image': { type: 'string' },
        'default-backend': { type: 'string' },
        'boot-timeout-ms': { type: 'string' },
        'stop-timeout-ms': { type: 'string' },
        'job-output-bytes': { type: 'string' },
        'default-pool': { type: 'string' },
        'job-agent-grace-ms': { type: 'string' },
        users: { type: 'string' },
        'allow-anonymous': { type: 'boolean' },
        'stop-vms-on-exit': { type: 'boolean' },
        'events-retention-days': { type: 'string' },
        'events-max-rows': { type: 'string' },
        'status-interval-ms': { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    }));
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new MvirtError('CONFIG_INVALID', `${msg}; see mvirtd --help`);
  }
  const str = (k: string): string | undefined => values[k] as string | undefined;

  const dataDir = path.resolve(str('data-dir') ?? '/var/lib/mvirt');
  const cpus = os.availableParallelism();
  const hostMiB = Math.floor(os.totalmem() / (1024 * 1024));
  const rawHost = str('host-id') ?? os.hostname().split('.')[0] ?? 'localhost';
  if (str('host-id') === undefined && nameProblem(rawHost)) {
    throw bad(
      'host-id',
      `the hostname ${JSON.stringify(rawHost)} is not a valid id; pass --host-id`,
    );
  }
  const prefix = str('prefix') ?? DEFAULT_PREFIX;
  for (const seg of prefix.split('/')) {
    if (nameProblem(seg)) throw bad('prefix', `segment ${JSON.stringify(seg)} ${nameProblem(seg)}`);
  }
  const logLevel = str('log-level') ?? env.MVIRT_LOG_LEVEL ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) throw bad('log-level', `one of ${LOG_LEVELS.join(', ')}`);

  const opts: DaemonOptions = {
    dataDir,
    imagesDir: path.resolve(str('images-dir') ?? path.join(dataDir, 'images')),
    listen: hostPort(str('listen'), 'listen', '127.0.0.1:1883'),
    wsListen: hostPort(str('ws-listen'), 'ws-listen', false),
    http: hostPort(str('http'), 'http', DEFAULT_HTTP),
    metricsRetentionHours: int(
      str('metrics-retention-hours'),
      'metrics-retention-hours',
      24,
      1,
      24 * 366,
    ),
    unixSocket:
      str('unix-socket') === 'off'
        ? false
        : path.resolve(str('unix-socket') ?? path.join(dataDir, 'mvirt.sock')),
    hostId: name(rawHost, 'host-id', rawHost),
    prefix,
    bridge: name(str('bridge'), 'bridge', 'mvirt0'),
    maxVms: int(str('max-vms'), 'max-vms', 64, 1, 100_000),
    maxVcpus: int(str('max-vcpus'), 'max-vcpus', cpus * 4, 1, 1_000_000),
    maxMemoryMiB: int(
      str('max-memory-mib'),
      'max-memory-mib',
      Math.max(256, Math.floor(hostMiB * 0.9)),
      64,
      1 << 30,
    ),
    defaultVcpus: int(str('default-vcpus'), 'default-vcpus', 1, 1, 64),
    defaultMemoryMiB: int(str('default-memory-mib'), 'default-memory-mib', 256, 64, 1024 * 1024),
    defaultImage: name(str('default-image'), 'default-image', 'default'),
    defaultBackend: name(str('default-backend'), 'default-backend', 'qemu'),
    bootTimeoutMs: int(str('boot-timeout-ms'), 'boot-timeout-ms', 120_000, 100, 3600_000),
    stopTimeoutMs: int(str('stop-timeout-ms'), 'stop-timeout-ms', 30_000, 0, 3600_000),
    jobOutputBytes: int(str('job-output-bytes'), 'job-output-bytes', 8 << 20, 4096, 1 << 30),
    jobAgentGraceMs: int(str('job-agent-grace-ms'), 'job-agent-grace-ms', 60_000, 100, 86_400_000),
    allowAnonymous:
      (values['allow-anonymous'] as boolean | undefined) ?? str('users') === undefined,
    stopVmsOnExit: (values['stop-vms-on-exit'] as boolean | undefined) ?? false,
    logLevel,
    eventsRetentionDays: int(str('events-retention-days'), 'events-retention-days', 30, 1, 36500),
    eventsMaxRows: int(str('events-max-rows'), 'events-max-rows', 100_000, 100, 100_000_000),
    statusIntervalMs: int(str('status-interval-ms'), 'status-interval-ms', 5000, 100, 3600_000),
    help: (values.help as boolean | undefined) ?? false,
    version: (values.version as boolean | undefined) ?? false,
  };
  if (str('default-pool') !== undefined)
    opts.defaultPool = name(str('default-pool'), 'default-pool', 'default');
  if (str('telemetry-interval-ms') !== undefined)
    opts.telemetryIntervalMs = int(
      str('telemetry-interval-ms'),
      'telemetry-interval-ms',
      5000,
      100,
      3600_000,
    );
  if (str('users') !== undefined) opts.usersFile = path.resolve(str('users')!);
  if (opts.defaultVcpus > opts.maxVcpus) {
    throw bad('default-vcpus', `${opts.defaultVcpus} exceeds --max-vcpus ${opts.maxVcpus}`);
  }
  if (opts.defaultMemoryMiB > opts.maxMemoryMiB) {
    throw bad(
      'default-memory-mib',
      `${opts.defaultMemoryMiB} exceeds --max-memory-mib ${opts.maxMemoryMiB}`,
    );
  }
  return opts;
}
