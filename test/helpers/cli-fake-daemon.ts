/**
 * Test double of mvirtd's RPC side for client and CLI unit tests: a real
 * in-process aedes broker on a loopback port plus a tiny responder that speaks
 * PROTOCOL.md (requests on `<root>/rpc/<method>`, replies in the request's
 * encoding, retained host status and VM state). It never boots anything: the
 * daemon's own tests cover the real thing.
 */
import { Aedes } from 'aedes';
import { connect, type MqttClient } from 'mqtt';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { decode, encode, sniffEncoding } from '../../protocol/codec.js';
import { MvirtError, toErrorBody } from '../../protocol/errors.js';
import type { EventRecord, SystemInfo, VmRecord, VmState } from '../../protocol/rpc.js';
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

export interface FakeDaemon {
  hostId: string;
  root: string;
  mqtt: MqttClient;
  vms: Map<string, VmRecord>;
  /** Every request seen, with the encoding it came in. */
  requests: { method: string; params: unknown; encoding: string }[];
  /** Replace or add a method handler; throw an MvirtError to reply with an error. */
  handle(method: string, h: Handler | 'no-reply'): void;
  /** Publish a VM state change (retained) and a host-wide event, as the daemon does. */
  setState(vm: VmRecord, state: VmState): Promise<void>;
  publishEvent(ev: EventRecord): Promise<void>;
  close(): Promise<void>;
}

let vmSeq = 0;

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
  const requests: FakeDaemon['requests'] = [];
  const events: EventRecord[] = [];
  const pub = (topic: string, v: unknown, retain = false): Promise<unknown> =>
    mqtt.publishAsync(topic, v === null ? Buffer.alloc(0) : JSON.stringify(v), { retain, qos: 1 });

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
