/**
 * The fs.* methods: files in a running VM through its agent (protocol/fs.ts).
 * Transfers go through transfers.ts (ordering, the window, the checks of the
 * guest's answers); the single operations are one agent call each, their
 * answers checked against their schemas. Who wrote, moved or removed what,
 * and who began reading what, is recorded (audit).
 */
import type * as z from 'zod';
import { MvirtError } from '../../protocol/errors.js';
import {
  FS_CHUNK_BYTES,
  FS_HOST_BUFFER_BYTES,
  FS_LIST_MAX,
  FS_WINDOW,
  FsDoneAnswer,
  FsListAnswer,
  FsStatAnswer,
  type FsOp,
} from '../../protocol/fs.js';
import type { DryRunPlan, ParamsOf, ResultOf, VmRecord } from '../../protocol/rpc.js';
import { formatIssues } from '../../protocol/validate.js';
import type { AgentSessions } from '../agent/sessions.js';
import type { EventLog } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import { createPlan } from '../plan.js';
import { createTransfers, fsErrorOf, type TransferOptions } from './transfers.js';

export interface GuestFilesDeps {
  agents: Pick<AgentSessions, 'call' | 'connected' | 'listen'>;
  vms: { get(ref: string): VmRecord };
  events: Pick<EventLog, 'append'>;
  log: MvirtLogger;
  options?: Partial<TransferOptions>;
}

export const DEFAULT_TRANSFER_OPTIONS: TransferOptions = {
  window: FS_WINDOW,
  bufferBytes: FS_HOST_BUFFER_BYTES,
  maxTransfers: 256,
  // A chunk under TCG with the guest busy: well under a second; a stuck guest fails the call.
  callTimeoutMs: 60_000,
  idleMs: 60_000,
};

export function createGuestFiles(deps: GuestFilesDeps) {
  const log = deps.log.child({ component: 'fs' });
  const options = { ...DEFAULT_TRANSFER_OPTIONS, ...deps.options };
  const transfers = createTransfers({
    call: (vmId, kind, body, timeoutMs) => deps.agents.call(vmId, kind, body, timeoutMs),
    abandoned: (vmId, transfer) => {
      deps.agents
        .call(vmId, 'fsOp', { op: { kind: 'close', transfer } }, options.callTimeoutMs)
        .catch((err: unknown) => log.debug({ vmId, transfer, err: String(err) }, 'close failed'));
    },
    options,
  });
  const offAgents = deps.agents.listen({
    gone: (vmId) => transfers.dropVm(vmId, 'the agent went away'),
  });

  /** The VM, if its agent is connected now. */
  function vmOf(ref: string): VmRecord {
    const vm = deps.vms.get(ref);
    if (!deps.agents.connected(vm.id))
      throw new MvirtError(
        'AGENT_UNAVAILABLE',
        `VM ${vm.name} is ${vm.state} and its agent is not connected; files can be reached once it is ready`,
        { details: { state: vm.state } },
      );
    return vm;
  }

  const audit = (vm: VmRecord, message: string, data?: unknown) =>
    deps.events.append({
      level: 'audit',
      component: 'fs',
      message: `vm ${vm.name}: ${message}`,
      objects: [vm.id],
      ...(data === undefined ? {} : { data }),
    });

  async function op<T>(vm: VmRecord, o: FsOp, schema: z.ZodType<T>): Promise<T> {
    const raw = await deps.agents
      .call(vm.id, 'fsOp', { op: o }, options.callTimeoutMs)
      .catch((err: unknown) => {
        throw fsErrorOf(err);
      });
    const r = schema.safeParse(raw);
    if (!r.success)
      throw new MvirtError(
        'AGENT_ERROR',
        `the agent of ${vm.name} answered ${o.kind} with ${formatIssues(r.error)}`,
      );
    return r.data;
  }

  return {
    async write(p: ParamsOf<'fs.write'>): Promise<ResultOf<'fs.write'>> {
      const vm = vmOf(p.vm);
      const data = Buffer.from(p.data, 'base64');
      const path = p.open?.path ?? transfers.pathOf(vm.id, 'write', p.transfer);
      const a = await transfers.write(vm.id, p.seq, {
        transfer: p.transfer,
        seq: p.seq,
        data: new Uint8Array(data.buffer, data.byteOffset, data.length),
        ...(p.open ? { open: p.open } : {}),
        ...(p.final ? { final: p.final } : {}),
      });
      // Once the guest took the opening: who began writing, and who finished.
      if (p.seq === 0)
        audit(vm, `writing ${p.open!.path}${p.open!.unpack ? ' (unpacking a tar archive)' : ''}`);
      if (a.complete) audit(vm, `wrote ${path ?? '?'} (${a.complete.size} bytes)`, a.complete);
      return a;
    },

    async read(p: ParamsOf<'fs.read'>): Promise<ResultOf<'fs.read'>> {
      const vm = vmOf(p.vm);
      const a = await transfers.read(vm.id, p.seq, {
        transfer: p.transfer,
        seq: p.seq,
        length: p.length ?? FS_CHUNK_BYTES,
        ...(p.open ? { open: p.open } : {}),
      });
      if (p.seq === 0) audit(vm, `reading ${p.open!.path}${p.open!.pack ? ' (as tar)' : ''}`);
      return {
        data: Buffer.from(a.data.buffer, a.data.byteOffset, a.data.length).toString('base64'),
        eof: a.eof,
        ...(a.end ? { end: a.end } : {}),
      };
    },

    async stat(p: ParamsOf<'fs.stat'>): Promise<ResultOf<'fs.stat'>> {
      const vm = vmOf(p.vm);
      const o: FsOp = { kind: 'stat', path: p.path };
      if (p.follow) o.follow = true;
      return { path: p.path, ...(await op(vm, o, FsStatAnswer)) };
    },

    async list(p: ParamsOf<'fs.list'>): Promise<ResultOf<'fs.list'>> {
      const vm = vmOf(p.vm);
      const limit = p.limit ?? FS_LIST_MAX;
      const r = await op(vm, { kind: 'list', path: p.path, limit }, FsListAnswer);
      if (r.entries.length > limit)
        throw new MvirtError('AGENT_ERROR', `the agent of ${vm.name} listed more than ${limit}`);
      return { path: p.path, ...r };
    },

    async mkdir(p: ParamsOf<'fs.mkdir'>): Promise<ResultOf<'fs.mkdir'>> {
      const vm = vmOf(p.vm);
      const { vm: _vm, dryRun: _d, ...rest } = p;
      audit(vm, `mkdir ${p.path}`);
      return { path: p.path, ...(await op(vm, { kind: 'mkdir', ...rest }, FsStatAnswer)) };
    },

    async remove(p: ParamsOf<'fs.remove'>): Promise<ResultOf<'fs.remove'>> {
      const vm = vmOf(p.vm);
      audit(vm, `remove ${p.path}${p.recursive ? ' (recursive)' : ''}`);
      const r = await op(
        vm,
        { kind: 'remove', path: p.path, ...(p.recursive ? { recursive: true } : {}) },
        FsDoneAnswer,
      );
      return { removed: r.removed === true };
    },

    async move(p: ParamsOf<'fs.move'>): Promise<ResultOf<'fs.move'>> {
      const vm = vmOf(p.vm);
      audit(vm, `move ${p.from} → ${p.to}`);
      const o: FsOp = { kind: 'move', from: p.from, to: p.to };
      if (p.overwrite) o.overwrite = true;
      return { path: p.to, ...(await op(vm, o, FsStatAnswer)) };
    },

    /** Dry runs: the same checks (the VM, its agent), the agent message, no change. */
    plan(method: 'fs.write' | 'fs.mkdir' | 'fs.remove' | 'fs.move', p: PlanParams): DryRunPlan {
      const vm = vmOf(p.vm);
      const b = createPlan(method);
      b.admit(`VM ${vm.name} is ${vm.state} with its agent connected`);
      const what =
        'from' in p
          ? `move ${p.from} to ${p.to}`
          : 'data' in p
            ? `write ${Buffer.from(p.data, 'base64').length} bytes of transfer ${p.transfer} (chunk ${p.seq})${p.final ? `, then rename it into place if its size is ${p.final.size} and sha256 ${p.final.sha256}` : ''}`
            : method === 'fs.mkdir'
              ? `make the directory ${p.path}`
              : `remove ${p.path}`;
      b.step(what);
      b.agent(method === 'fs.write' ? 'fsWrite' : 'fsOp', { vm: vm.id });
      b.change(`event: audit "vm ${vm.name}: …"`);
      return b.done();
    },

    transfers,
    close(): void {
      offAgents();
      transfers.close();
    },
  };
}

type PlanParams =
  ParamsOf<'fs.write'> | ParamsOf<'fs.mkdir'> | ParamsOf<'fs.remove'> | ParamsOf<'fs.move'>;

export type GuestFiles = ReturnType<typeof createGuestFiles>;
