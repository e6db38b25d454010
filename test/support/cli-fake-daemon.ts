/**
 * Test double of mvirtd's RPC side for client and CLI unit tests: a real
 * in-process aedes broker on a loopback port plus a tiny responder that speaks
 * PROTOCOL.md (requests on `<root>/rpc/<method>`, replies in the request's
 * encoding, retained host status and VM state). It never boots anything: the
 * daemon's own tests cover the real thing.
 */
import { Aedes } from 'aedes';
import { connect, type MqttClient } from 'mqtt';
import { EventEmitter } from 'node:events';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { decode, encode, sniffEncoding } from '../../protocol/codec.js';
import { MvirtError, toErrorBody } from '../../protocol/errors.js';
import type {
  EventRecord,
  JobLogs,
  JobRecord,
  JobTarget,
  OutputChunk,
  PoolRecord,
  SystemInfo,
  VmRecord,
  VmState,
} from '../../protocol/rpc.js';
import { topics } from '../../protocol/topics.js';

export interface TestBroker {
  url: string;
  port: number;
  aedes: Aedes;
  close(): Promise<void>;
}

export async function startTestBroker(): Promise<TestBroker> {
  const aedes = await Aedes.createBroker();
  const server: Server = createServer(aedes.handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    aedes,
    close: async () => {
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

type Handler = (params: Record<string, unknown>) => unknown | Promise<unknown>;

export interface SeenRequest {
  method: string;
  params: unknown;
  encoding: string;
}

export interface FakeDaemon {
  hostId: string;
  root: string;
  mqtt: MqttClient;
  vms: Map<string, VmRecord>;
  /** Every request seen, with the encoding it came in. */
  requests: SeenRequest[];
  /** Resolves with the first `method` request at index `from` (default: the next one) or later. */
  waitRequest(method: string, from?: number): Promise<SeenRequest>;
  /** Replace or add a method handler; throw an MvirtError to reply with an error. */
  handle(method: string, h: Handler | 'no-reply'): void;
  jobs: Map<string, JobRecord>;
  /** Stored output per job id, oldest first: what job.logs pages through. */
  output: Map<string, OutputChunk[]>;
  /** Chunks per job.logs page (default: as many as maxBytes allows). */
  logsPageChunks: number;
  /** Runs inside job.run before the reply: script what the job does before anyone can subscribe. */
  onJobRun: ((job: JobRecord) => void | Promise<void>) | undefined;
  /** Runs inside job.cancel instead of the default (which ends the job as cancelled). */
  onJobCancel: ((job: JobRecord) => void | Promise<void>) | undefined;
  /** Produce a chunk: stored for job.logs and published live (unless `live: false`). */
  addOutput(
    jobId: string,
    stream: OutputChunk['stream'],
    data: string,
    o?: { live?: boolean },
  ): Promise<OutputChunk>;
  /** Publish a chunk live only, as it is (duplicates, out of order). */
  publishOutput(jobId: string, chunk: OutputChunk): Promise<void>;
  /** Change a job record and publish it on its retained state topic. */
  setJob(jobId: string, patch: Partial<JobRecord>): Promise<JobRecord>;
  /** Retention: forget the oldest n stored chunks of a job. */
  dropOutput(jobId: string, n: number): void;
  pools: Map<string, PoolRecord>;
  /** Publish a VM state change (retained) and a host-wide event, as the daemon does. */
  setState(vm: VmRecord, state: VmState): Promise<void>;
  publishEvent(ev: EventRecord): Promise<void>;
  close(): Promise<void>;
}

let vmSeq = 0;
let jobSeq = 0;

const TERMINAL: ReadonlySet<string> = new Set([
  'succeeded',
  'failed',
  'timed_out',
  'cancelled',
  'lost',
]);

export async function startFakeDaemon(
  url: string,
  o: { hostId?: string; prefix?: string; online?: boolean; bootSteps?: VmState[] } = {},
): Promise<FakeDaemon> {
  const hostId = o.hostId ?? 'test-host';
  const root = `${o.prefix ?? 'mvirt'}/${hostId}`;
  const t = topics(root);
  const mqtt = connect(url, {
    clientId: `fake-${hostId}`,
    reconnectPeriod: 0,
    will: {
      topic: t.status,
      payload: Buffer.from(JSON.stringify({ hostId, online: false })),
      retain: true,
      qos: 1,
    },
  });
  await new Promise<void>((resolve, reject) => {
    mqtt.once('connect', () => resolve());
    mqtt.once('error', reject);
  });
  const vms = new Map<string, VmRecord>();
  const jobs = new Map<string, JobRecord>();
  const output = new Map<string, OutputChunk[]>();
  const pools = new Map<string, PoolRecord>();
  const seen = new EventEmitter();
  const requests: FakeDaemon['requests'] = [];
  const events: EventRecord[] = [];
  const pub = (topic: string, v: unknown, retain = false): Promise<unknown> =>
    mqtt.publishAsync(topic, v === null ? Buffer.alloc(0) : JSON.stringify(v), { retain, qos: 1 });

  const findJob = (id: unknown): JobRecord => {
    const job = jobs.get(String(id));
    if (!job) throw new MvirtError('JOB_NOT_FOUND', `no job ${String(id)}`);
    return job;
  };
  const findPool = (name: unknown): PoolRecord => {
    const pool = pools.get(String(name));
    if (!pool) throw new MvirtError('POOL_NOT_FOUND', `no pool named ${String(name)}`);
    return pool;
  };
  const find = (ref: unknown): VmRecord => {
    for (const vm of vms.values()) if (vm.id === ref || vm.name === ref) return vm;
    throw new MvirtError('VM_NOT_FOUND', `no VM named ${String(ref)}`);
  };
  const fake: FakeDaemon = {
    hostId,
    root,
    mqtt,
    vms,
    requests,
    handle: (m, h) => void handlers.set(m, h),
    waitRequest: (method, from = requests.length) =>
      new Promise<SeenRequest>((resolve) => {
        const check = (): void => {
          const r = requests.slice(from).find((q) => q.method === method);
          if (!r) return;
          seen.removeListener('request', check);
          resolve(r);
        };
        seen.on('request', check);
        check();
      }),
    jobs,
    output,
    logsPageChunks: Infinity,
    onJobRun: undefined,
    onJobCancel: undefined,
    addOutput: async (jobId, stream, data, opts = {}) => {
      const job = findJob(jobId);
      const chunk: OutputChunk = { seq: job.nextSeq, stream, data };
      job.nextSeq++;
      job.outputBytes += Buffer.byteLength(data);
      const stored = output.get(jobId) ?? [];
      stored.push(chunk);
      output.set(jobId, stored);
      if (opts.live !== false) await fake.publishOutput(jobId, chunk);
      return chunk;
    },
    publishOutput: async (jobId, chunk) => {
      await pub(t.jobOutput(jobId), chunk);
    },
    setJob: async (jobId, patch) => {
      const job = findJob(jobId);
      Object.assign(job, patch);
      if (TERMINAL.has(job.state) && job.finishedAt === null)
        job.finishedAt = new Date().toISOString();
      await pub(t.jobState(jobId), job, true);
      return job;
    },
    dropOutput: (jobId, n) => {
      const job = findJob(jobId);
      const stored = output.get(jobId) ?? [];
      for (const c of stored.splice(0, n)) {
        job.dropped.chunks++;
        job.dropped.bytes += Buffer.byteLength(c.data);
      }
    },
    pools,
    setState: async (vm, state) => {
      const from = vm.state;
      vm.state = state;
      vm.updatedAt = new Date().toISOString();
      await pub(t.vmState(vm.id), vm, true);
      await pub(t.vmEvents(vm.id), { at: vm.updatedAt, type: 'state', from, to: state });
    },
    publishEvent: async (ev) => {
      events.push(ev);
      await pub(t.events, ev);
    },
    close: async () => {
      await pub(t.status, null, true);
      for (const id of vms.keys()) await pub(t.vmState(id), null, true);
      for (const id of jobs.keys()) await pub(t.jobState(id), null, true);
      for (const name of pools.keys()) await pub(t.poolState(name), null, true);
      await mqtt.endAsync();
    },
  };

  const info = (): SystemInfo => ({
    hostId,
    version: '0.0.0-test',
    cpus: 2,
    memoryMiB: 4096,
    allocated: { vcpus: 0, memoryMiB: 0 },
    limits: { vcpus: 2, memoryMiB: 3072, maxVms: 16 },
    backends: [{ name: 'qemu', available: true, accel: 'tcg' }],
    vms: {},
    images: ['default'],
  });

  const handlers = new Map<string, Handler | 'no-reply'>([
    ['system.info', () => info()],
    [
      'vm.create',
      (p) => {
        const name = String(p.name);
        if ([...vms.values()].some((v) => v.name === name))
          throw new MvirtError('VM_EXISTS', `a VM named ${name} already exists`);
        const now = new Date().toISOString();
        const vm: VmRecord = {
          id: `vm-${(++vmSeq).toString(16).padStart(8, '0')}`,
          name,
          state: 'stopped',
          vcpus: (p.vcpus as number) ?? 1,
          memoryMiB: (p.memoryMiB as number) ?? 256,
          kind: (p.kind as VmRecord['kind']) ?? 'service',
          image: (p.image as string) ?? 'default',
          backend: 'qemu',
          network: (p.network as VmRecord['network']) ?? { mode: 'none' },
          metadata: (p.metadata as Record<string, string>) ?? {},
          createdAt: now,
          updatedAt: now,
        };
        vms.set(vm.id, vm);
        void pub(t.vmState(vm.id), vm, true);
        return vm;
      },
    ],
    ['vm.get', (p) => find(p.vm)],
    ['vm.list', (p) => ({ vms: [...vms.values()].filter((v) => !p.state || v.state === p.state) })],
    [
      'vm.start',
      async (p) => {
        const vm = find(p.vm);
        for (const s of o.bootSteps ?? (['starting', 'ready'] as VmState[]))
          await fake.setState(vm, s);
        return vm;
      },
    ],
    ...(['vm.stop', 'vm.kill'] as const).map(
      (m) =>
        [
          m,
          async (p: Record<string, unknown>) => {
            const vm = find(p.vm);
            await fake.setState(vm, 'stopped');
            return vm;
          },
        ] as [string, Handler],
    ),
    [
      'vm.delete',
      async (p) => {
        const vm = find(p.vm);
        if (vm.state !== 'stopped' && vm.state !== 'failed')
          throw new MvirtError('VM_RUNNING', `VM ${vm.name} is ${vm.state}`);
        vms.delete(vm.id);
        await pub(t.vmState(vm.id), null, true);
        return {};
      },
    ],
    [
      'job.run',
      async (p) => {
        const now = new Date().toISOString();
        const target: JobTarget =
          p.vm !== undefined
            ? { kind: 'vm', vm: String(p.vm) }
            : p.pool !== undefined
              ? { kind: 'pool', pool: String(p.pool) }
              : { kind: 'image', image: String(p.image ?? 'default') };
        const job: JobRecord = {
          jobId: `job-${(++jobSeq).toString(16).padStart(12, '0')}`,
          vm: null,
          target,
          argv: p.argv as string[],
          ...(p.cwd !== undefined ? { cwd: String(p.cwd) } : {}),
          ...(p.timeoutMs !== undefined ? { timeoutMs: Number(p.timeoutMs) } : {}),
          state: 'queued',
          exitCode: null,
          signal: null,
          oomKilled: false,
          createdAt: now,
          startedAt: null,
          finishedAt: null,
          nextSeq: 0,
          outputBytes: 0,
          dropped: { chunks: 0, bytes: 0 },
        };
        jobs.set(job.jobId, job);
        await pub(t.jobState(job.jobId), job, true);
        await fake.onJobRun?.(job);
        return jobs.get(job.jobId);
      },
    ],
    ['job.get', (p) => findJob(p.jobId)],
    [
      'job.list',
      (p) => {
        const list = [...jobs.values()].filter(
          (j) => (!p.vm || j.vm === p.vm) && (!p.state || j.state === p.state),
        );
        return { jobs: p.limit ? list.slice(-Number(p.limit)) : list };
      },
    ],
    [
      'job.cancel',
      async (p) => {
        const job = findJob(p.jobId);
        if (fake.onJobCancel) await fake.onJobCancel(job);
        else if (!TERMINAL.has(job.state))
          await fake.setJob(job.jobId, { state: 'cancelled', reason: 'cancelled by a client' });
        return job;
      },
    ],
    [
      'job.logs',
      (p): JobLogs => {
        const job = findJob(p.jobId);
        const firstSeq = job.dropped.chunks;
        const from = Math.max(Number(p.fromSeq ?? 0), firstSeq);
        const maxBytes = Number(p.maxBytes ?? 4 * 1024 * 1024);
        const rest = (output.get(job.jobId) ?? []).filter((c) => c.seq >= from);
        const page: OutputChunk[] = [];
        let size = 0;
        for (const c of rest) {
          if (page.length >= fake.logsPageChunks) break;
          if (page.length > 0 && size + c.data.length > maxBytes) break;
          page.push(c);
          size += c.data.length;
        }
        return {
          chunks: page,
          nextSeq: page.length > 0 ? page.at(-1)!.seq + 1 : from,
          more: rest.length > page.length,
          firstSeq,
        };
      },
    ],
    [
      'pool.set',
      async (p) => {
        const now = new Date().toISOString();
        const old = pools.get(String(p.name));
        const pool: PoolRecord = {
          name: String(p.name),
          image: String(p.image ?? old?.image ?? 'default'),
          min: Number(p.min),
          max: Number(p.max ?? old?.max ?? p.min),
          vcpus: Number(p.vcpus ?? old?.vcpus ?? 1),
          memoryMiB: Number(p.memoryMiB ?? old?.memoryMiB ?? 256),
          createdAt: old?.createdAt ?? now,
          updatedAt: now,
          vms: old?.vms ?? { starting: Number(p.min), ready: 0, busy: 0 },
        };
        pools.set(pool.name, pool);
        await pub(t.poolState(pool.name), pool, true);
        return pool;
      },
    ],
    ['pool.get', (p) => findPool(p.name)],
    ['pool.list', () => ({ pools: [...pools.values()] })],
    [
      'pool.delete',
      async (p) => {
        const pool = findPool(p.name);
        pools.delete(pool.name);
        await pub(t.poolState(pool.name), null, true);
        return {};
      },
    ],
    [
      'events.query',
      (p) => ({
        events: events
          .filter((e) => !p.objectId || e.objects.includes(String(p.objectId)))
          .slice(-(Number(p.limit) || 100)),
      }),
    ],
  ]);

  mqtt.on('message', (topic, payload) => {
    if (topic.endsWith('/console/in')) {
      // Echo console input back, as a guest's tty would.
      const vmId = topic.slice(root.length + 4, -'/console/in'.length);
      void mqtt.publishAsync(t.vmConsoleOut(vmId), payload);
      return;
    }
    const method = topic.slice(root.length + 5);
    const encoding = sniffEncoding(payload);
    let req: { id?: string; replyTo?: string; params?: Record<string, unknown> };
    try {
      req = decode(payload, encoding) as typeof req;
    } catch {
      return;
    }
    requests.push({ method, params: req.params, encoding });
    seen.emit('request');
    const h = handlers.get(method);
    if (h === 'no-reply') return;
    void (async () => {
      let reply: unknown;
      try {
        if (!h) throw new MvirtError('UNKNOWN_METHOD', `no method ${method}`);
        reply = { id: req.id, ok: true, result: await h(req.params ?? {}) };
      } catch (err) {
        reply = { id: req.id, ok: false, error: toErrorBody(err) };
      }
      if (req.replyTo) await mqtt.publishAsync(req.replyTo, encode(reply, encoding), { qos: 1 });
    })();
  });
  await mqtt.subscribeAsync([t.rpcWildcard, t.vmConsoleInWildcard], { qos: 1 });
  await pub(
    t.status,
    { ...info(), hostId, online: o.online ?? true, at: new Date().toISOString() },
    true,
  );
  return fake;
}
