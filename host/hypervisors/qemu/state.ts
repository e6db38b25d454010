/**
 * A VM's memory and device state to a folder and back, with QEMU's migration
 * stream (device state over a unix socket in the VM's folder: QEMU 7.2 has
 * no `file:` migration (8.2+), `exec:` is what the seccomp filter's
 * spawn=deny forbids, and `getfd` needs SCM_RIGHTS, which Node cannot send).
 *
 * Guest RAM is saved one of two ways, chosen by the backend's RAM folder:
 *  - `file`: the VM's RAM is a file on tmpfs (memory-backend-file,
 *    share=on); the stream skips it (x-ignore-shared) and the file is copied
 *    beside the state, sparse; a restore copies it back for the new VM.
 *  - `stream`: RAM goes inside the stream (no RAM folder configured).
 * Measured with this code (TCG, 2 cores): the busybox test guest
 * (qemu-state.test.ts), stream: save 200 ms, spawn → running 261 ms; file:
 * save 45 ms, spawn → running 140 ms (the RAM file's copy included). The µOS
 * (256 MiB, bench/snapshots.ts), stream: ~400 ms to load 137 MiB, restore →
 * ready 802 ms; file: 111 ms, restore → ready 574 ms, the VM paused ~75 ms
 * for a snapshot. So file is the default; stream remains for hosts without
 * a RAM folder. QEMU 7.2 opens a RAM file read-write even with share=off
 * (copy-on-write mapping), so each VM gets its own copy rather than sharing
 * the snapshot's file, which a compromised QEMU could then write into.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { open, rm, stat } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { MvirtError } from '../../../protocol/errors.js';
import { copySparse } from '../../sparse-copy.js';
import type { SavedState, StateSpec } from '../types.js';
import { QmpError, type QmpClient, type QmpEvent } from './qmp.js';
import type { QemuMachine } from './args.js';

export const STATE_OUT_SOCKET = 'state-out.sock';
/** The files of a saved state's folder. */
export const STATE_FILE = 'state.bin';
export const RAM_FILE = 'ram.bin';
/** The RAM backend's id: the RAM block a `file` state skips and a restore maps. */
export const RAM_BACKEND_ID = 'mvirt.ram';

/**
 * QEMU's default migration bandwidth cap (128 MiB/s in 7.2) is for live
 * migration over a network; a paused VM to a local file should go as fast as
 * it can: 86 MB took 0.7 s capped and 0.19 s uncapped.
 */
const UNCAPPED_BYTES_PER_S = 2 ** 40;

/** The device layout a saved state depends on; per-VM paths and names are left out. */
export function deviceDigest(spec: StateSpec, machine: string, ram: SavedState['ram']): string {
  const layout = {
    machine,
    ram,
    disks: spec.disks.map((d) => ({
      format: d.format ?? 'raw',
      readOnly: d.readOnly,
      volume: d.serial !== undefined,
    })),
    net: spec.network.mode,
    channel: spec.channel,
  };
  return createHash('sha256').update(JSON.stringify(layout)).digest('hex');
}

/** The machine type behind the alias the VM was started with (`pc` → `pc-i440fx-7.2`). */
export async function resolvedMachine(qmp: QmpClient): Promise<string> {
  const type = await qmp.executeRaw<string>('qom-get', { path: '/machine', property: 'type' });
  return type.replace(/-machine$/, '');
}

/** Resolves on MIGRATION completed; rejects on failed or cancelled, or when QMP closes. */
function migrationDone(qmp: QmpClient, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onEvent = (ev: QmpEvent) => {
      if (ev.event !== 'MIGRATION') return;
      const status = String(ev.data.status);
      if (status === 'completed') finish();
      else if (status === 'failed' || status === 'cancelled')
        finish(new Error(`${what}: migration ${status}`));
    };
    const onClose = () => finish(new Error(`${what}: QEMU went away`));
    const finish = (err?: Error) => {
      qmp.off('event', onEvent);
      qmp.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    qmp.on('event', onEvent);
    qmp.on('close', onClose);
  });
}

/** Ask QEMU why a migration failed (query-migrate's error-desc), for the error message. */
async function migrationError(qmp: QmpClient, fallback: Error): Promise<Error> {
  const info = await qmp
    .executeRaw<{ 'error-desc'?: string }>('query-migrate')
    .catch(() => undefined);
  return info?.['error-desc'] ? new Error(`${fallback.message}: ${info['error-desc']}`) : fallback;
}

export interface SaveParts {
  qmp: QmpClient;
  /** The VM's folder (the stream's socket goes there). */
  dir: string;
  /** The VM's RAM file (`file` RAM), or null: RAM goes inside the stream. */
  ramFile: string | null;
  /** Give the socket QEMU connects to to the VM's user (confined QEMU). */
  grant(file: string): Promise<void>;
  /** The QEMU build (probe's `-version` line): a state loads only into the same one. */
  version: string;
  log: Logger;
}

/** Pause, write the state (and RAM file) into `target`, leave the VM paused (postmigrate). */
export async function saveState(
  parts: SaveParts,
  target: string,
  spec: StateSpec,
): Promise<SavedState> {
  const { qmp, dir, log } = parts;
  const started = performance.now();
  const ram: SavedState['ram'] = parts.ramFile ? 'file' : 'stream';
  const file = path.join(target, STATE_FILE);
  const sock = path.join(dir, STATE_OUT_SOCKET);
  await rm(sock, { force: true });
  // 'wx': a state file is written once; an existing one is never overwritten.
  const out = await open(file, 'wx', 0o600).catch((err: NodeJS.ErrnoException) => {
    throw new MvirtError('HYPERVISOR_ERROR', `cannot save the VM's state: ${err.message}`, {
      cause: err,
    });
  });
  const server = createServer();
  let conn: Socket | null = null;
  try {
    server.listen(sock);
    await once(server, 'listening');
    await parts.grant(sock);
    const accepted = once(server, 'connection') as Promise<[Socket]>;
    const machine = await resolvedMachine(qmp);
    await qmp.executeRaw('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        // `file` RAM stays out of the stream: it is copied below.
        { capability: 'x-ignore-shared', state: ram === 'file' },
      ],
    });
    await qmp.executeRaw('migrate-set-parameters', { 'max-bandwidth': UNCAPPED_BYTES_PER_S });
    await qmp.execute('stop');
    const done = migrationDone(qmp, 'saving state');
    await qmp.executeRaw('migrate', { uri: `unix:${sock}` });
    [conn] = await accepted;
    const written = pipeline(conn, createWriteStream('', { fd: out.fd, autoClose: false }));
    await done.catch(async (err: Error) => {
      conn?.destroy();
      throw await migrationError(qmp, err);
    });
    await written;
    const files: Record<string, number> = { [STATE_FILE]: (await out.stat()).size };
    // Paused: the RAM file does not change while it is copied; its holes
    // (pages the guest never touched) stay holes (sparse-copy.ts).
    if (parts.ramFile) {
      const dst = path.join(target, RAM_FILE);
      await copySparse(parts.ramFile, dst);
      files[RAM_FILE] = (await stat(dst)).size;
    }
    const bytes = Object.values(files).reduce((a, b) => a + b, 0);
    const ms = Math.round(performance.now() - started);
    log.info({ target, files, ms, machine, ram }, 'state saved');
    return {
      backend: 'qemu',
      version: parts.version,
      machine,
      memoryMiB: spec.memoryMiB,
      vcpus: spec.vcpus,
      devices: deviceDigest(spec, machine, ram),
      ram,
      files,
      bytes,
    };
  } catch (err) {
    await rm(file, { force: true });
    await rm(path.join(target, RAM_FILE), { force: true });
    throw new MvirtError('HYPERVISOR_ERROR', `cannot save the VM's state: ${errText(err)}`, {
      cause: err,
    });
  } finally {
    conn?.destroy();
    server.close();
    await out.close().catch(() => undefined);
    await rm(sock, { force: true });
  }
}

const errText = (err: unknown) =>
  err instanceof QmpError ? err.desc : err instanceof Error ? err.message : String(err);

/** The fd a restoring QEMU inherits its state file on (backend.ts spawn). */
export const STATE_FD = 3;

/**
 * QEMU was started with `-incoming defer` (paused) and its state file on an
 * inherited fd: load it and wait until QEMU has. Measured (144 MB state of a
 * µOS guest, TCG, 2 cores): 781 ms streamed by mvirtd through a unix socket,
 * 426 ms read by QEMU from the inherited file.
 */
export async function loadState(
  qmp: QmpClient,
  uri: string,
  state: SavedState,
  log: Logger,
): Promise<void> {
  const started = performance.now();
  const bytes = state.bytes;
  await qmp.executeRaw('migrate-set-capabilities', {
    capabilities: [
      { capability: 'events', state: true },
      // The RAM file is in place already: the stream has none of it.
      { capability: 'x-ignore-shared', state: state.ram === 'file' },
    ],
  });
  const done = migrationDone(qmp, 'loading state');
  await qmp.executeRaw('migrate-incoming', { uri });
  await done.catch(async (err: Error) => {
    throw await migrationError(qmp, err);
  });
  log.info({ bytes, ms: Math.round(performance.now() - started) }, 'state loaded');
}

/** Why a QEMU launched for `spec` here could not load `state`, or null. */
export function stateProblem(
  state: SavedState,
  spec: StateSpec,
  here: { version: string | null; ram: SavedState['ram'] },
): string | null {
  if (state.backend !== 'qemu') return `the state was saved by backend ${state.backend}`;
  if (state.ram !== here.ram)
    return `the state keeps guest RAM as ${state.ram === 'file' ? 'a file' : 'part of the stream'}; this host's VMs keep it as ${here.ram === 'file' ? 'a file (--ram-dir)' : 'the stream (no --ram-dir)'}`;
  if (here.version !== state.version)
    return `the state was saved by ${state.version}; this host has ${here.version ?? 'no QEMU'}`;
  if (state.memoryMiB !== spec.memoryMiB)
    return `the state is of a ${state.memoryMiB} MiB VM, not ${spec.memoryMiB} MiB`;
  if (state.vcpus !== spec.vcpus)
    return `the state is of a ${state.vcpus}-vCPU VM, not ${spec.vcpus}`;
  if (state.devices !== deviceDigest(spec, state.machine, state.ram))
    return 'the VM’s devices (disks, network, agent channel) differ from those the state was saved with';
  return null;
}

/** The machine family each `machine` option boots; a state of another is refused. */
const FAMILY: Record<QemuMachine, RegExp> = {
  pc: /^pc-i440fx-/,
  q35: /^pc-q35-/,
  microvm: /^microvm$/,
};

/** The backend's saved-state parts: RunningVm.saveState for a VM, and Hypervisor.stateProblem. */
export function qemuStates(o: {
  machine: QemuMachine;
  /** A VM's RAM file (`file` RAM), or null when VMs keep RAM in the stream. */
  ramFileOf(vmId: string): string | null;
  /** This host's QEMU build (the probe's `-version` line). */
  version(): Promise<string | null>;
  /** Give a file in a VM's folder to its user (confine.ts handOverFile). */
  grant(dir: string, file: string): Promise<void>;
}) {
  return {
    saverFor:
      (qmp: QmpClient, dir: string, log: Logger) =>
      async (target: string, spec: StateSpec): Promise<SavedState> => {
        const version = await o.version();
        if (!version) throw new MvirtError('BACKEND_UNAVAILABLE', 'QEMU does not say its version');
        const ramFile = o.ramFileOf(path.basename(dir));
        const grant = (f: string) => o.grant(dir, f);
        return saveState({ qmp, dir, ramFile, grant, version, log }, target, spec);
      },
    async problem(state: SavedState, spec: StateSpec): Promise<string | null> {
      if (!FAMILY[o.machine].test(state.machine))
        return `the state is of machine type ${state.machine}; this host boots ${o.machine} machines`;
      const ram = o.ramFileOf('probe') ? 'file' : 'stream';
      return stateProblem(state, spec, { version: await o.version(), ram });
    },
  };
}
