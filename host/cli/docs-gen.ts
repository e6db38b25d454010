/**
 * Generates the API reference from the protocol itself, so the docs cannot
 * drift: docs/asyncapi.yaml (AsyncAPI 3.0; RPC params from the zod schemas in
 * protocol/rpc.ts) and the code table of docs/errors.md (from ERROR_CODES).
 * `node --import tsx host/cli/docs-gen.ts` rewrites both; a unit test fails
 * when they are stale.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ERROR_CODES } from '../../protocol/errors.js';
import {
  JOB_STATES,
  PARAMS,
  RPC_METHODS,
  VM_KINDS,
  VM_STATES,
  type RpcMethod,
} from '../../protocol/rpc.js';
import { HostStatus, VmTelemetry } from '../../protocol/metrics.js';
import { errorsTable } from './exit.js';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

// ------------------------------------------------------------- tiny YAML

const PLAIN = /^[A-Za-z_$][A-Za-z0-9_ .,()/$-]*$/;
const RESERVED = /^(true|false|null|yes|no|on|off|~)$/i;

function scalar(v: Json): string {
  if (typeof v === 'string')
    return PLAIN.test(v) &&
      !RESERVED.test(v) &&
      !v.endsWith(' ') &&
      !v.includes(': ') &&
      !v.includes(' #')
      ? v
      : JSON.stringify(v);
  return JSON.stringify(v);
}

/** YAML for JSON data: block style, JSON-quoted strings where plain ones could be misread. */
export function toYaml(v: Json, indent = ''): string {
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]\n';
    if (v.every((x) => typeof x !== 'object' || x === null))
      return `[${v.map((x) => scalar(x)).join(', ')}]\n`;
    return (
      '\n' + v.map((x) => `${indent}- ${toYaml(x, indent + '  ').replace(/^\n\s*/, '')}`).join('')
    );
  }
  if (v !== null && typeof v === 'object') {
    const keys = Object.keys(v);
    if (keys.length === 0) return '{}\n';
    return (
      '\n' +
      keys
        .map((k) => {
          const child = v[k]!;
          const key = scalar(k);
          const body = toYaml(child, indent + '  ');
          return `${indent}${key}:${body.startsWith('\n') ? body : ` ${body}`}`;
        })
        .join('')
    );
  }
  return `${scalar(v)}\n`;
}

// ------------------------------------------------------------- schemas

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });
const str = (description?: string): Json =>
  description ? { type: 'string', description } : { type: 'string' };
const time: Json = { type: 'string', format: 'date-time' };
const int: Json = { type: 'integer' };
const obj = (
  properties: Record<string, Json>,
  required: string[],
  extra: Record<string, Json> = {},
): Json => ({
  type: 'object',
  required,
  properties,
  ...extra,
});

/** JSON Schema of a method's params from its zod schema (input side, as a caller writes it). */
function paramsSchema(m: RpcMethod): Json {
  const s = z.toJSONSchema(PARAMS[m], { io: 'input', unrepresentable: 'any' }) as Record<
    string,
    Json
  >;
  delete s.$schema;
  // zod spells date-time as a very long regex too; the format says it.
  return JSON.parse(JSON.stringify(s), (k, v: Json) =>
    k === 'pattern' && typeof v === 'string' && v.length > 80 ? undefined : v,
  ) as Json;
}

/** JSON Schema of a published payload from its zod schema (what a subscriber receives). */
function payloadSchema(schema: z.ZodType, description: string): Json {
  const s = z.toJSONSchema(schema, { io: 'output', unrepresentable: 'any' }) as Record<
    string,
    Json
  >;
  delete s.$schema;
  return { ...s, description };
}

const METRIC_POINT = obj(
  {
    t: { type: 'number', description: 'bucket start, epoch milliseconds' },
    samples: { type: 'integer', description: 'samples averaged into this bucket' },
    cpuPercent: { type: 'number', description: 'average (100 = one CPU)' },
    cpuMaxPercent: { type: 'number' },
    memUsedMiB: { type: 'number', description: 'average' },
    memTotalMiB: { type: 'number' },
    load1: { type: 'number', description: 'average' },
    diskUsedBytes: { type: 'number', description: 'last value in the bucket' },
    netRxBytes: { type: 'number', description: 'bytes received during the bucket' },
    netTxBytes: { type: 'number', description: 'bytes sent during the bucket' },
  },
  [
    't',
    'samples',
    'cpuPercent',
    'cpuMaxPercent',
    'memUsedMiB',
    'memTotalMiB',
    'load1',
    'diskUsedBytes',
    'netRxBytes',
    'netTxBytes',
  ],
);

const METRICS_RESULT = obj(
  {
    object: str('host, or the VM id'),
    step: { type: 'integer', description: 'seconds per point' },
    resolution: { type: 'integer', description: 'stored roll-up read: 10 or 60 s' },
    points: {
      type: 'array',
      items: ref('MetricPoint'),
      description: 'oldest first; gaps left out',
    },
  },
  ['object', 'step', 'resolution', 'points'],
);

const VM_RECORD = obj(
  {
    id: str(),
    name: str(),
    state: ref('VmState'),
    vcpus: int,
    memoryMiB: int,
    kind: { type: 'string', enum: [...VM_KINDS] },
    image: str(),
    backend: str(),
    network: obj(
      {
        mode: { type: 'string', enum: ['none', 'user', 'bridge'] },
        agentOverNetwork: { type: 'boolean' },
      },
      ['mode'],
    ),
    metadata: { type: 'object', additionalProperties: { type: 'string' } },
    createdAt: time,
    updatedAt: time,
    stateReason: str('why the VM is in its state (failed, stopped by recovery, …)'),
    startedAt: time,
    accel: str('kvm or tcg'),
    pid: int,
    ip: str('bridge mode: the allocated address, kept until delete'),
    mac: str('bridge mode: derived from the VM id'),
    cloudInit: obj(
      {
        userData: { type: 'boolean' },
        metaData: { type: 'boolean' },
        networkConfig: { type: 'boolean' },
      },
      [],
    ),
    boot: {
      type: 'object',
      description: 'guest uptime in seconds at each boot milestone; readyAtMs from spawn',
      properties: {
        initS: { type: 'number' },
        agentStartS: { type: 'number' },
        connectedS: { type: 'number' },
        readyAtMs: { type: 'number' },
      },
    },
    agentVersion: str(),
  },
  ['id', 'name', 'state', 'vcpus', 'memoryMiB', 'kind', 'createdAt'],
);

const JOB_TARGET: Json = {
  description: 'where the job runs: a VM, an ephemeral VM of an image, or a VM of a pool',
  oneOf: [
    obj({ kind: { const: 'vm' }, vm: str('VM id or name as given') }, ['kind', 'vm']),
    obj({ kind: { const: 'image' }, image: str() }, ['kind', 'image']),
    obj({ kind: { const: 'pool' }, pool: str() }, ['kind', 'pool']),
  ],
};

const JOB_RECORD = obj(
  {
    jobId: str('job-<hex>'),
    vm: {
      type: ['string', 'null'],
      description: 'the VM the job runs (or ran) in; null while queued for a VM',
    },
    target: ref('JobTarget'),
    argv: { type: 'array', items: { type: 'string' } },
    cwd: str(),
    timeoutMs: int,
    state: ref('JobState'),
    exitCode: { type: ['integer', 'null'] },
    signal: {
      type: ['string', 'null'],
      description: 'the signal that ended the process, e.g. SIGKILL',
    },
    oomKilled: { type: 'boolean' },
    createdAt: time,
    startedAt: { type: ['string', 'null'], format: 'date-time' },
    finishedAt: { type: ['string', 'null'], format: 'date-time' },
    reason: str('why the job ended as it did (lost, failed to start, cancelled, …)'),
    queuePosition: {
      type: 'integer',
      minimum: 1,
      description: '1-based place in the queue while queued waiting for capacity',
    },
    nextSeq: {
      type: 'integer',
      description: 'the next output sequence number: chunks 0 … nextSeq-1 were produced',
    },
    outputBytes: { type: 'integer', description: 'output produced so far, in bytes' },
    dropped: obj({ chunks: int, bytes: int }, ['chunks', 'bytes'], {
      description: 'output dropped by the retention limit, oldest first',
    }),
  },
  [
    'jobId',
    'vm',
    'target',
    'argv',
    'state',
    'exitCode',
    'signal',
    'oomKilled',
    'createdAt',
    'startedAt',
    'finishedAt',
    'nextSeq',
    'outputBytes',
    'dropped',
  ],
);

const POOL_RECORD = obj(
  {
    name: str(),
    image: str(),
    min: { type: 'integer', description: 'ready VMs the daemon keeps' },
    max: { type: 'integer', description: 'most VMs the pool may hold' },
    vcpus: int,
    memoryMiB: int,
    createdAt: time,
    updatedAt: time,
    vms: obj({ starting: int, ready: int, busy: int }, ['starting', 'ready', 'busy'], {
      description: "the pool's VMs now: booting, idle and ready, running a job",
    }),
  },
  ['name', 'image', 'min', 'max', 'vcpus', 'memoryMiB', 'createdAt', 'updatedAt', 'vms'],
);

const JOB_LOGS = obj(
  {
    chunks: { type: 'array', items: ref('OutputChunk') },
    nextSeq: {
      type: 'integer',
      description: "ask again from here for more (the job's nextSeq once all is read)",
    },
    more: { type: 'boolean', description: 'more chunks are stored beyond this page' },
    firstSeq: {
      type: 'integer',
      description: 'the oldest chunk still stored; earlier ones were dropped by retention',
    },
  },
  ['chunks', 'nextSeq', 'more', 'firstSeq'],
);

const EVENT_RECORD = obj(
  {
    id: int,
    at: time,
    level: { type: 'string', enum: ['debug', 'info', 'warn', 'error', 'audit'] },
    component: str(),
    message: str(),
    objects: {
      type: 'array',
      items: { type: 'string' },
      description: 'ids of every object the event touches (VM, job, image, host:<id>, …)',
    },
    data: {},
  },
  ['id', 'at', 'level', 'component', 'message', 'objects'],
);

const SYSTEM_INFO = obj(
  {
    hostId: str(),
    version: str(),
    cpus: int,
    memoryMiB: int,
    allocated: obj({ vcpus: int, memoryMiB: int }, ['vcpus', 'memoryMiB']),
    limits: obj({ vcpus: int, memoryMiB: int, maxVms: int }, ['vcpus', 'memoryMiB', 'maxVms']),
    backends: {
      type: 'array',
      items: obj(
        {
          name: str(),
          available: { type: 'boolean' },
          accel: { type: ['string', 'null'] },
          reason: str(),
        },
        ['name', 'available', 'accel'],
      ),
    },
    vms: { type: 'object', description: 'count of VMs by state', additionalProperties: int },
    images: { type: 'array', items: { type: 'string' } },
  },
  ['hostId', 'version', 'cpus', 'memoryMiB', 'allocated', 'backends', 'vms'],
);

const RESULTS: Record<RpcMethod, Json> = {
  'system.info': ref('SystemInfo'),
  'vm.create': ref('VmRecord'),
  'vm.get': ref('VmRecord'),
  'vm.list': obj({ vms: { type: 'array', items: ref('VmRecord') } }, ['vms']),
  'vm.start': ref('VmRecord'),
  'vm.stop': ref('VmRecord'),
  'vm.kill': ref('VmRecord'),
  'vm.pause': ref('VmRecord'),
  'vm.resume': ref('VmRecord'),
  'vm.reboot': ref('VmRecord'),
  'vm.delete': { type: 'object', additionalProperties: false },
  'job.run': {
    allOf: [
      ref('JobRecord'),
      obj(
        {
          stdout: str('with wait: the output, cut at JOB_WAIT_OUTPUT_BYTES (1 MiB) per stream'),
          stderr: str(),
          truncated: { type: 'boolean', description: 'with wait: stdout or stderr was cut' },
        },
        [],
      ),
    ],
  },
  'job.get': ref('JobRecord'),
  'job.list': obj({ jobs: { type: 'array', items: ref('JobRecord') } }, ['jobs']),
  'job.cancel': ref('JobRecord'),
  'job.logs': ref('JobLogs'),
  'pool.set': ref('PoolRecord'),
  'pool.get': ref('PoolRecord'),
  'pool.list': obj({ pools: { type: 'array', items: ref('PoolRecord') } }, ['pools']),
  'pool.delete': { type: 'object', additionalProperties: false },
  'events.query': obj({ events: { type: 'array', items: ref('EventRecord') } }, ['events']),
  'metrics.query': ref('MetricsResult'),
};

const SUMMARIES: Record<RpcMethod, string> = {
  'system.info': 'Host capacity, allocation, backends, VM counts by state, images.',
  'vm.create': 'Define a VM; it stays stopped.',
  'vm.get': 'One VM by id or name.',
  'vm.list': 'All VMs, optionally in one state.',
  'vm.start':
    'Boot a VM; with wait, the reply comes once it is ready (or an error once it failed).',
  'vm.stop': 'Graceful stop (agent or ACPI), then SIGTERM, then SIGKILL; replies once stopped.',
  'vm.kill': 'Immediate stop; replies once stopped.',
  'vm.pause': 'Pause the vCPUs.',
  'vm.resume': 'Resume a paused VM.',
  'vm.reboot': 'Reboot the guest.',
  'vm.delete': 'Delete a stopped or failed VM (VM_RUNNING otherwise).',
  'job.run':
    'Run argv in a VM, an ephemeral VM of an image, or a pool VM (at most one of vm, image, pool); with wait, replies once finished.',
  'job.get': 'One job record.',
  'job.list': 'Jobs, filtered by VM and state, at most limit of them.',
  'job.cancel': 'Cancel a job (its whole process group in the guest).',
  'job.logs':
    'Stored output chunks from a sequence number, one page (at most maxBytes of data) per call; page on with nextSeq while more.',
  'pool.set':
    'Create or change a pool: the daemon keeps min ready VMs of its image, at most max in all (max ≥ min).',
  'pool.get': 'One pool by name.',
  'pool.list': 'All pools.',
  'pool.delete': 'Delete a pool.',
  'events.query': 'The event log, filtered by object, level and time.',
  'metrics.query':
    'Telemetry roll-ups of a VM (or, without vm, of the host) between from and to: 10 s buckets for the last hour, 1 min for a day; step re-aggregates.',
};

const channelId = (m: string): string => `rpc_${m.replace(/\./g, '_')}`;

// ------------------------------------------------------------- document

export function asyncApiDocument(): Json {
  const param = (description: string): Json => ({ description });
  const hostParams = {
    prefix: param('topic prefix (mvirtd --prefix, default mvirt)'),
    hostId: param('host id (mvirtd --host-id, default the hostname)'),
  };
  const channels: Record<string, Json> = {};
  const operations: Record<string, Json> = {};
  const messages: Record<string, Json> = {};
  const schemas: Record<string, Json> = {
    VmState: { type: 'string', enum: [...VM_STATES] },
    JobState: { type: 'string', enum: [...JOB_STATES] },
    VmRecord: VM_RECORD,
    JobTarget: JOB_TARGET,
    JobRecord: JOB_RECORD,
    JobLogs: JOB_LOGS,
    PoolRecord: POOL_RECORD,
    EventRecord: EVENT_RECORD,
    SystemInfo: SYSTEM_INFO,
    HostStatus: payloadSchema(
      HostStatus,
      'online:false (with hostId and at only) is the daemon last will; while online, the system.info fields, the host figures, broker counters and jobs by state',
    ),
    MetricPoint: METRIC_POINT,
    MetricsResult: METRICS_RESULT,
    VmEvent: obj(
      {
        at: time,
        type: str('state, created, deleted, agent.hello, …'),
        from: ref('VmState'),
        to: ref('VmState'),
        reason: str(),
      },
      ['at', 'type'],
    ),
    Telemetry: payloadSchema(
      VmTelemetry,
      "the agent's sample as validated by the host, with the VM id, the host's receipt time and disk and network totals",
    ),
    OutputChunk: obj(
      { seq: int, stream: { type: 'string', enum: ['stdout', 'stderr'] }, data: str() },
      ['seq', 'stream', 'data'],
    ),
    ErrorBody: obj(
      {
        code: { type: 'string', enum: Object.keys(ERROR_CODES), description: 'see docs/errors.md' },
        message: str(),
        details: {},
      },
      ['code', 'message'],
    ),
    ReplyEnvelope: {
      oneOf: [
        obj({ id: str(), ok: { const: true }, result: {} }, ['ok', 'result']),
        obj({ id: str(), ok: { const: false }, error: ref('ErrorBody') }, ['ok', 'error']),
      ],
    },
  };

  channels.replies = {
    address: null,
    title: 'RPC replies',
    description:
      "The request's replyTo topic, chosen by the caller; it must lie outside <prefix>/<hostId>/. " +
      'The protocol client uses <prefix>/_clients/<clientId>/replies. The reply uses the request encoding (JSON or CBOR).',
    messages: Object.fromEntries(
      RPC_METHODS.map((m) => [
        `${channelId(m)}_reply`,
        { $ref: `#/components/messages/${channelId(m)}_reply` },
      ]),
    ),
  };

  for (const m of RPC_METHODS) {
    const id = channelId(m);
    schemas[`${id}_params`] = paramsSchema(m);
    messages[`${id}_request`] = {
      name: `${m} request`,
      contentType: 'application/json',
      description: 'JSON, or CBOR (a map) for a CBOR reply',
      payload: obj(
        {
          id: str('echoed in the reply'),
          replyTo: str('reply topic; omit for fire-and-forget'),
          params: ref(`${id}_params`),
        },
        [],
      ),
    };
    messages[`${id}_reply`] = {
      name: `${m} reply`,
      contentType: 'application/json',
      payload: {
        oneOf: [
          obj({ id: str(), ok: { const: true }, result: RESULTS[m] }, ['ok', 'result']),
          obj({ id: str(), ok: { const: false }, error: ref('ErrorBody') }, ['ok', 'error']),
        ],
      },
    };
    channels[id] = {
      address: `{prefix}/{hostId}/rpc/${m}`,
      title: m,
      messages: { request: { $ref: `#/components/messages/${id}_request` } },
      parameters: {
        prefix: { $ref: '#/components/parameters/prefix' },
        hostId: { $ref: '#/components/parameters/hostId' },
      },
    };
    operations[m] = {
      action: 'send',
      summary: SUMMARIES[m],
      channel: { $ref: `#/channels/${id}` },
      messages: [{ $ref: `#/channels/${id}/messages/request` }],
      reply: {
        address: { location: '$message.payload#/replyTo' },
        channel: { $ref: '#/channels/replies' },
        messages: [{ $ref: `#/channels/replies/messages/${id}_reply` }],
      },
    };
  }

  const topic = (
    name: string,
    address: string,
    description: string,
    payload: Json,
    o: { retained?: boolean; send?: boolean; contentType?: string; extraParams?: string[] } = {},
  ): void => {
    messages[name] = {
      name,
      contentType: o.contentType ?? 'application/json',
      payload,
    };
    channels[name] = {
      address,
      description: `${description}${o.retained ? ' Retained.' : ''}`,
      messages: { [name]: { $ref: `#/components/messages/${name}` } },
      parameters: {
        prefix: { $ref: '#/components/parameters/prefix' },
        hostId: { $ref: '#/components/parameters/hostId' },
        ...Object.fromEntries(
          (o.extraParams ?? []).map((p) => [p, { $ref: `#/components/parameters/${p}` }]),
        ),
      },
    };
    operations[`${o.send ? 'send' : 'receive'}_${name}`] = {
      action: o.send ? 'send' : 'receive',
      channel: { $ref: `#/channels/${name}` },
      messages: [{ $ref: `#/channels/${name}/messages/${name}` }],
      ...(o.retained ? { bindings: { mqtt: { retain: true } } } : {}),
    };
  };
  topic(
    'hostStatus',
    '{prefix}/{hostId}/status',
    "Host status; the daemon's last will sets online:false.",
    ref('HostStatus'),
    { retained: true },
  );
  topic(
    'hostEvents',
    '{prefix}/{hostId}/events',
    'Every event-log entry, live (what events.query returns).',
    ref('EventRecord'),
  );
  topic(
    'vmState',
    '{prefix}/{hostId}/vm/{vmId}/state',
    'The VM record after each change; an empty retained message when the VM is deleted.',
    ref('VmRecord'),
    { retained: true, extraParams: ['vmId'] },
  );
  topic(
    'vmEvents',
    '{prefix}/{hostId}/vm/{vmId}/events',
    'Lifecycle events of one VM.',
    ref('VmEvent'),
    { extraParams: ['vmId'] },
  );
  topic(
    'vmTelemetry',
    '{prefix}/{hostId}/vm/{vmId}/telemetry',
    'Guest figures reported by the agent.',
    ref('Telemetry'),
    { extraParams: ['vmId'] },
  );
  topic(
    'vmConsoleOut',
    '{prefix}/{hostId}/vm/{vmId}/console/out',
    'Serial console output, raw bytes.',
    { type: 'string', format: 'binary' },
    { contentType: 'application/octet-stream', extraParams: ['vmId'] },
  );
  topic(
    'vmConsoleIn',
    '{prefix}/{hostId}/vm/{vmId}/console/in',
    'Serial console input, raw bytes (controllers may publish here). The µOS runs no shell or getty on the console: nothing in the default image reads it (run commands with job.run).',
    { type: 'string', format: 'binary' },
    { contentType: 'application/octet-stream', send: true, extraParams: ['vmId'] },
  );
  topic(
    'jobState',
    '{prefix}/{hostId}/job/{jobId}/state',
    'The job record after each change.',
    ref('JobRecord'),
    { retained: true, extraParams: ['jobId'] },
  );
  topic(
    'jobOutput',
    '{prefix}/{hostId}/job/{jobId}/output',
    'Live output chunks; replay with job.logs.',
    ref('OutputChunk'),
    { extraParams: ['jobId'] },
  );
  topic(
    'poolState',
    '{prefix}/{hostId}/pool/{pool}/state',
    'The pool record after each change.',
    ref('PoolRecord'),
    { retained: true, extraParams: ['pool'] },
  );

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'mvirt public topic API',
      version: '1',
      description:
        'mvirtd embeds an MQTT 3.1.1 broker. Controllers publish RPC requests on <prefix>/<hostId>/rpc/<method> and ' +
        'get replies on their replyTo topic; state is retained on topics. Generated by host/cli/docs-gen.ts from ' +
        'protocol/ (do not edit by hand). The contract in prose: docs/protocol.md; error codes: docs/errors.md.',
    },
    defaultContentType: 'application/json',
    servers: {
      local: {
        host: '127.0.0.1:1883',
        protocol: 'mqtt',
        protocolVersion: '3.1.1',
        description: 'mvirtd --listen (default); also a unix socket at <data-dir>/mvirt.sock',
      },
      websocket: {
        host: '127.0.0.1:1884',
        protocol: 'ws',
        description: 'mvirtd --ws-listen, for browsers',
      },
      http: {
        host: '127.0.0.1:8180',
        pathname: '/mqtt',
        protocol: 'ws',
        description:
          'mvirtd --http (default on loopback): MQTT over WebSocket on /mqtt beside the dashboard and /metrics',
      },
    },
    channels,
    operations,
    components: {
      parameters: {
        ...hostParams,
        vmId: param('VM id (as in the VM record)'),
        jobId: param('job id'),
        pool: param('pool name'),
      },
      schemas,
      messages,
    },
  };
}

// ------------------------------------------------------------- files

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const ASYNCAPI_PATH = path.join(ROOT, 'docs/asyncapi.yaml');
export const ERRORS_PATH = path.join(ROOT, 'docs/errors.md');
export const TABLE_START = '<!-- generated: error codes (host/cli/docs-gen.ts) -->';
export const TABLE_END = '<!-- end of generated table -->';

export const asyncApiYaml = (): string =>
  `# Generated by host/cli/docs-gen.ts from protocol/: do not edit.\n${toYaml(asyncApiDocument()).replace(/^\n/, '')}`;

/** Table padding is prettier's business: compare Markdown tables without it. */
export const normalizeTables = (md: string): string =>
  md.replace(/ {2,}/g, ' ').replace(/-{3,}/g, '---');

/** docs/errors.md with its generated table section replaced. */
export function errorsMarkdown(current: string): string {
  const a = current.indexOf(TABLE_START);
  const b = current.indexOf(TABLE_END);
  if (a < 0 || b < a)
    throw new Error(`docs/errors.md lacks the ${TABLE_START} … ${TABLE_END} markers`);
  return `${current.slice(0, a + TABLE_START.length)}\n\n${errorsTable()}\n${current.slice(b)}`;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  writeFileSync(ASYNCAPI_PATH, asyncApiYaml());
  // Format like `npm run format` would, so the check below stays quiet.
  const prettier = await import('prettier');
  const md = errorsMarkdown(readFileSync(ERRORS_PATH, 'utf8'));
  const config = (await prettier.resolveConfig(ERRORS_PATH)) ?? {};
  writeFileSync(ERRORS_PATH, await prettier.format(md, { ...config, filepath: ERRORS_PATH }));
  process.stderr.write('wrote docs/asyncapi.yaml and the table of docs/errors.md\n');
}
