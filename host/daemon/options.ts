/**
 * mvirtd's command line. Every problem is a CONFIG_INVALID error that names
 * the option and says what to do, because an operator reads it at start-up.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { MvirtError } from '../../protocol/errors.js';
import { NETWORK_MODES, type NetworkMode } from '../../protocol/rpc.js';
import { DEFAULT_PREFIX, nameProblem } from '../../protocol/topics.js';
import { ipToInt, parseSubnet, type Subnet } from '../network/subnet.js';
import { parseUplinkOptions, UPLINK_ARGS, type UplinkOptions } from '../uplink/options.js';

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
  /** Host bridge for bridged VMs; false = bridge networking off. */
  bridge: string | false;
  /** --bridge or --network bridge was given: a bridge that cannot be made is an error. */
  bridgeRequired: boolean;
  /** Network mode of VMs created without one. */
  network: NetworkMode;
  /** Subnet of bridged VMs; the host takes its first address. */
  subnet: Subnet;
  /** Outbound NAT (nftables masquerade) for bridged VMs. */
  nat: boolean;
  /** Port of the agents' TCP listener on the bridge address. */
  guestPort: number;
  /** DNS server given to bridged guests; null = none. */
  guestDns: string | null;
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
  /** --storage-max-gib: the volumes' virtual sizes together at most this; null: no cap. */
  storageMaxGiB: number | null;
  /** --volume-import-dir: the only folder volume.create {importFrom} reads; null: none. */
  volumeImportDir: string | null;
  /** --image-import-dir: the only folder image.import {file} reads; null: none. */
  imageImportDir: string | null;
  usersFile?: string;
  /** Anonymous controllers over the unix socket (never TCP); default: only when no users file is given. */
  allowAnonymous: boolean;
  /** TLS on the MQTT TCP, WebSocket and HTTP listeners; reloaded on SIGHUP. */
  tls?: { cert: string; key: string; clientCa?: string };
  stopVmsOnExit: boolean;
  /** Ephemeral VMs (jobs without a VM, snapshot pools) fork a template snapshot of their kind; --no-templates: they boot. */
  templates: boolean;
  /** Ready forks kept per kind for jobs without a VM (host/jobs/spares.ts); 0: none. */
  spares: number;
  /** A kind with no such job for this long loses its spares. */
  spareIdleMs: number;
  /** Run hypervisors as mvirtd's user, no cgroup (debugging, the confinement bench). */
  unconfined: boolean;
  /** --cloud-hypervisor-bin, --firecracker-bin, --jailer-bin: the VMM programs (a name on PATH or a path). */
  cloudHypervisorBin: string;
  firecrackerBin: string;
  /** 'off': Firecracker never runs under the jailer. */
  jailerBin: string;
  /** Guest RAM as files in this folder (tmpfs): fast snapshots and restores; null: anonymous RAM. */
  ramDir: string | null;
  logLevel: string;
  eventsRetentionDays: number;
  eventsMaxRows: number;
  auditRetentionDays: number;
  auditMaxRows: number;
  statusIntervalMs: number;
  /** --uplink: serve the controller API on an external broker too (host/uplink/); null: off. */
  uplink: UplinkOptions | null;
  /** --label K=V: facts about this host for fleet placement (system.info labels). */
  labels: Record<string, string>;
  help: boolean;
  version: boolean;
}

export { USAGE } from './usage.js';

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

/** A program: a bare name (looked up on PATH when used) or a path, made absolute. */
function program(v: string | undefined, option: string, dflt: string): string {
  if (v === undefined) return dflt;
  if (v === '' || /[\0\n]/.test(v))
    throw bad(option, `a program name or path, got ${JSON.stringify(v)}`);
  return v.includes('/') ? path.resolve(v) : v;
}

function name(v: string | undefined, option: string, dflt: string): string {
  const s = v ?? dflt;
  const p = nameProblem(s);
  if (p) throw bad(option, `${JSON.stringify(s)} ${p}`);
  return s;
}

function bridgeOption(v: string | undefined, root: boolean): string | false {
  if (v === 'off' || v === 'none') return false;
  if (v === undefined) return root ? 'mvirt0' : false;
  const p = nameProblem(v);
  if (p || v.length > 15)
    throw bad('bridge', `${JSON.stringify(v)}: ${p ?? 'at most 15 characters'}`);
  return v;
}

function subnetOption(v: string | undefined): Subnet {
  try {
    return parseSubnet(v ?? '10.213.0.0/16');
  } catch (err) {
    throw bad('subnet', (err as Error).message.replace(/^--subnet: /, ''));
  }
}

/** The first nameserver of resolv.conf that a guest can reach (not loopback). */
function dnsOption(v: string | undefined, resolvConf: () => string): string | null {
  if (v === 'off' || v === 'none') return null;
  if (v !== undefined) {
    try {
      ipToInt(v);
    } catch {
      throw bad('guest-dns', `expected an IPv4 address or off, got ${JSON.stringify(v)}`);
    }
    return v;
  }
  for (const m of resolvConf().matchAll(/^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/gm)) {
    if (!m[1]!.startsWith('127.')) return m[1]!;
  }
  return null;
}

const readResolvConf = (): string => {
  try {
    return readFileSync('/etc/resolv.conf', 'utf8');
  } catch {
    return '';
  }
};

export function parseOptions(
  argv: string[],
  env: NodeJS.ProcessEnv = process.env,
  /** Whether bridge networking may default on (tests pass false). */
  root: boolean = process.getuid?.() === 0,
  resolvConf: () => string = readResolvConf,
): DaemonOptions {
  let values: Record<string, string | boolean | string[] | undefined>;
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
        network: { type: 'string' },
        subnet: { type: 'string' },
        nat: { type: 'boolean' },
        'guest-port': { type: 'string' },
        'guest-dns': { type: 'string' },
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
        'storage-max-gib': { type: 'string' },
        'volume-import-dir': { type: 'string' },
        'image-import-dir': { type: 'string' },
        users: { type: 'string' },
        'allow-anonymous': { type: 'boolean' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'tls-client-ca': { type: 'string' },
        'stop-vms-on-exit': { type: 'boolean' },
        'no-templates': { type: 'boolean' },
        spares: { type: 'string' },
        'spare-idle-s': { type: 'string' },
        unconfined: { type: 'boolean' },
        'cloud-hypervisor-bin': { type: 'string' },
        'firecracker-bin': { type: 'string' },
        'jailer-bin': { type: 'string' },
        'ram-dir': { type: 'string' },
        'events-retention-days': { type: 'string' },
        'events-max-rows': { type: 'string' },
        'audit-retention-days': { type: 'string' },
        'audit-max-rows': { type: 'string' },
        'status-interval-ms': { type: 'string' },
        'log-level': { type: 'string' },
        ...UPLINK_ARGS,
        label: { type: 'string', multiple: true },
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
    bridge: bridgeOption(str('bridge'), root),
    bridgeRequired:
      (str('bridge') !== undefined && str('bridge') !== 'off') ||
      str('network') === 'bridge' ||
      values.nat === true,
    network: 'none', // set below from the bridge
    subnet: subnetOption(str('subnet')),
    nat: (values.nat as boolean | undefined) ?? false,
    guestPort: int(str('guest-port'), 'guest-port', 1885, 1, 65535),
    guestDns: dnsOption(str('guest-dns'), resolvConf),
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
    storageMaxGiB:
      str('storage-max-gib') === undefined
        ? null
        : int(str('storage-max-gib'), 'storage-max-gib', 0, 1, 1 << 30),
    volumeImportDir:
      str('volume-import-dir') === undefined ? null : path.resolve(str('volume-import-dir')!),
    imageImportDir:
      str('image-import-dir') === undefined ? null : path.resolve(str('image-import-dir')!),
    allowAnonymous:
      (values['allow-anonymous'] as boolean | undefined) ?? str('users') === undefined,
    stopVmsOnExit: (values['stop-vms-on-exit'] as boolean | undefined) ?? false,
    templates: !((values['no-templates'] as boolean | undefined) ?? false),
    spares: int(str('spares'), 'spares', 1, 0, 64),
    spareIdleMs: int(str('spare-idle-s'), 'spare-idle-s', 600, 1, 86_400) * 1000,
    unconfined: (values.unconfined as boolean | undefined) ?? false,
    cloudHypervisorBin: program(
      str('cloud-hypervisor-bin'),
      'cloud-hypervisor-bin',
      'cloud-hypervisor',
    ),
    firecrackerBin: program(str('firecracker-bin'), 'firecracker-bin', 'firecracker'),
    jailerBin: program(str('jailer-bin'), 'jailer-bin', 'jailer'),
    ramDir: ramDirOf(str('ram-dir'), dataDir),
    logLevel,
    eventsRetentionDays: int(str('events-retention-days'), 'events-retention-days', 30, 1, 36500),
    eventsMaxRows: int(str('events-max-rows'), 'events-max-rows', 100_000, 100, 100_000_000),
    auditRetentionDays: int(str('audit-retention-days'), 'audit-retention-days', 365, 1, 36500),
    auditMaxRows: int(str('audit-max-rows'), 'audit-max-rows', 1_000_000, 100, 100_000_000),
    statusIntervalMs: int(str('status-interval-ms'), 'status-interval-ms', 5000, 100, 3600_000),
    uplink: parseUplinkOptions(str),
    labels: parseLabels((values.label as string[] | undefined) ?? [], bad),
    help: (values.help as boolean | undefined) ?? false,
    version: (values.version as boolean | undefined) ?? false,
  };
  const network = str('network') ?? (opts.bridge ? 'bridge' : 'user');
  if (!(NETWORK_MODES as readonly string[]).includes(network))
    throw bad('network', `one of ${NETWORK_MODES.join(', ')}, got ${JSON.stringify(network)}`);
  opts.network = network as NetworkMode;
  if (opts.network === 'bridge' && !opts.bridge)
    throw bad(
      'network',
      'bridge needs a bridge: run mvirtd as root (or with CAP_NET_ADMIN) and without --bridge off',
    );
  if (opts.nat && !opts.bridge) throw bad('nat', 'NAT is for bridged VMs; --bridge is off');
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
  const cert = str('tls-cert');
  const key = str('tls-key');
  if ((cert === undefined) !== (key === undefined))
    throw bad(
      cert === undefined ? 'tls-key' : 'tls-cert',
      'give --tls-cert and --tls-key together',
    );
  if (str('tls-client-ca') !== undefined && cert === undefined)
    throw bad('tls-client-ca', 'client certificates need TLS: give --tls-cert and --tls-key too');
  if (cert !== undefined && key !== undefined) {
    opts.tls = { cert: path.resolve(cert), key: path.resolve(key) };
    if (str('tls-client-ca') !== undefined) opts.tls.clientCa = path.resolve(str('tls-client-ca')!);
  }
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

/**
 * The RAM folder: given, `none`, or a folder of this data dir on /dev/shm
 * (two daemons on one host never share one).
 */
function ramDirOf(given: string | undefined, dataDir: string): string | null {
  if (given === 'none') return null;
  if (given !== undefined) return path.resolve(given);
  if (!existsSync('/dev/shm')) return null;
  const hash = createHash('sha256').update(path.resolve(dataDir)).digest('hex').slice(0, 12);
  return `/dev/shm/mvirt-${hash}`;
}

const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const LABEL_VALUE = /^[A-Za-z0-9_.:-]{0,128}$/;

/** `--label K=V`…: keys and values of letters, digits and `_.-` (values also `:`). */
export function parseLabels(
  given: string[],
  bad: (option: string, problem: string) => MvirtError,
): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const l of given) {
    const eq = l.indexOf('=');
    const k = eq < 0 ? l : l.slice(0, eq);
    const v = eq < 0 ? '' : l.slice(eq + 1);
    if (eq < 0 || !LABEL_KEY.test(k) || !LABEL_VALUE.test(v))
      throw bad(
        'label',
        `expected K=V (letters, digits, _ . - in K, also : in V), got ${JSON.stringify(l)}`,
      );
    if (k in labels) throw bad('label', `${k} is given twice`);
    labels[k] = v;
  }
  return labels;
}
