/**
 * The Firecracker backend: `firecracker --api-sock` in the VM's folder, then
 * the VM through its REST API (specs/firecracker.yaml): machine config, boot
 * source (the µOS kernel and initrd), drives, the TAP of a bridged VM and the
 * vsock the agent dials, then InstanceStart; pause and resume with PATCH /vm,
 * saved states with /snapshot/create and /snapshot/load, power-off with
 * SendCtrlAltDel (then signals, from the VM manager). Firecracker's serial
 * console is its stdin and stdout: two FIFOs in the VM's folder, so that a
 * later mvirtd reads the console of a VM it re-attached to. It has no reboot
 * (a guest reboot ends the process) and no disk hot-plug.
 */
import { constants, openSync, closeSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { VSOCK_PORT } from '../../../protocol/agent.js';
import { createApiVm, type ApiVmControl } from '../api-vm.js';
import { makeConsoleFifos, startConsolePump, type ConsolePump } from '../console-pump.js';
import { listenHybridVsock, type HybridVsockListener } from '../hybrid-vsock.js';
import { createRestClient, waitForApi, type RestClient } from '../rest.js';
import type {
  Hypervisor,
  HypervisorCapabilities,
  LaunchSpec,
  ProbeResult,
  RunningVm,
  StateSpec,
  VmRuntime,
} from '../types.js';
import {
  describeState,
  disposeVmmOrphans,
  identifyVmm,
  linkDrives,
  spawnVmm,
  stateProblemOf,
  VMM_FILES,
} from '../vmm-common.js';
import { probeVmm } from '../vmm-probe.js';
import { attachVmm, checkLaunchable, disposeVmm, launchFailed } from '../vmm-backend.js';
import { checkSpec, configRequests, FC_BACKEND, toRunState } from './config.js';
import { jailerState } from './jailer.js';

export { FC_BACKEND };

const FC_ID = { name: FC_BACKEND, label: 'Firecracker' };

export interface FirecrackerOptions {
  /** Default `firecracker` on PATH (mvirtd --firecracker-bin). */
  binary?: string;
  /** Default `jailer` on PATH (mvirtd --jailer-bin); 'off': never. */
  jailer?: string;
  kvmPath?: string;
  launchTimeoutMs?: number;
  agentConnectTimeoutMs?: number;
  consoleLogBytes?: number;
  probeTimeoutMs?: number;
}

const DEFAULTS = {
  binary: 'firecracker',
  jailer: 'jailer',
  kvmPath: '/dev/kvm',
  launchTimeoutMs: 10_000,
  agentConnectTimeoutMs: 120_000,
  consoleLogBytes: 1024 * 1024,
  probeTimeoutMs: 5000,
} as const;

export const FC_CAPABILITIES: HypervisorCapabilities = {
  channels: ['vsock', 'tcp'],
  pause: true,
  // No reset device: a guest reboot ends the Firecracker process.
  reboot: false,
  // SendCtrlAltDel: the µOS's init powers off on it.
  gracefulShutdown: true,
  console: true,
  directKernelBoot: true,
  // x86_64 boot-source: an uncompressed ELF vmlinux (its bzImage support was never more than experimental).
  kernelFormats: ['elf'],
  // Drives are fixed at InstanceStart (PATCH /drives only swaps a drive's file).
  hotplugDisks: false,
  liveDiskSnapshots: false,
  snapshots: true,
  // No fw_cfg: a restored guest has no place to read its new identity from
  // (vmId, hostname, entropy, token), so its state resumes only as the VM it
  // was saved from (vm.suspend), never as a fork; until the agent can take
  // its identity over the vsock channel (issue 15, item 4).
  forks: false,
  accel: ['kvm'],
};

/** The files of a saved state (absolute paths go to the API: the state's folder is not the VM's). */
const STATE_FILE = 'state.bin';
const MEM_FILE = 'mem.bin';

const isProgram = (binary: string) => (argv: string[]) =>
  path.basename(argv[0] ?? '') === path.basename(binary) && argv.includes('--api-sock');

function fcControl(api: RestClient, version: () => Promise<string>): ApiVmControl {
  const state = async () => ((await api.call('GET', '/')) as { state?: string }).state;
  return {
    pause: async () => void (await api.call('PATCH', '/vm', { state: 'Paused' })),
    resume: async () => void (await api.call('PATCH', '/vm', { state: 'Resumed' })),
    powerdown: async () =>
      void (await api.call('PUT', '/actions', { action_type: 'SendCtrlAltDel' })),
    status: async () => toRunState(await state()),
    async saveState(dir: string, spec: StateSpec) {
      if ((await state()) !== 'Paused') await api.call('PATCH', '/vm', { state: 'Paused' });
      await api.call('PUT', '/snapshot/create', {
        snapshot_type: 'Full',
        snapshot_path: path.resolve(dir, STATE_FILE),
        mem_file_path: path.resolve(dir, MEM_FILE),
      });
      return describeState(dir, FC_BACKEND, await version(), spec);
    },
    close: () => api.close(),
  };
}

export function createFirecrackerBackend(options: FirecrackerOptions, log: Logger): Hypervisor {
  const opts = { ...DEFAULTS, ...options };
  const blog = log.child({ backend: FC_BACKEND });
  let probed: Promise<ProbeResult & { binary: string | null }> | null = null;
  const jail = jailerState(opts.jailer);
  if (!jail.jail) blog.info({ reasons: jail.reasons }, 'Firecracker runs without the jailer');
  const probe = () =>
    (probed ??= probeVmm({
      binary: opts.binary,
      name: FC_BACKEND,
      option: '--firecracker-bin',
      kvmPath: opts.kvmPath,
      timeoutMs: opts.probeTimeoutMs,
    }).then((r) => ({ ...r, confinement: jail })));
  const version = async () => (await probe()).version ?? 'unknown';
  const ours = isProgram(opts.binary);
  const api = (dir: string, timeoutMs = 30_000) =>
    createRestClient({ socketPath: path.join(dir, VMM_FILES.api), name: FC_BACKEND, timeoutMs });
  const consoleOf = (
    dir: string,
    maxLogBytes: number,
    connect: { timeoutMs: number; signal?: AbortSignal },
    vmLog: Logger,
  ) =>
    startConsolePump({
      source: { kind: 'pipe', base: path.join(dir, VMM_FILES.console) },
      logFile: path.join(dir, VMM_FILES.consoleLog),
      maxLogBytes,
      connect,
      log: vmLog,
    });

  async function launch(spec: LaunchSpec, vmLog: Logger): Promise<RunningVm> {
    const p = await probe();
    const binary = checkLaunchable(FC_ID, p, spec);
    const requests = spec.restore ? (checkSpec(spec), []) : configRequests(spec);
    await mkdir(spec.dir, { recursive: true, mode: 0o700 });
    const base = path.join(spec.dir, VMM_FILES.console);
    await Promise.all(
      [VMM_FILES.api, VMM_FILES.vsock, `${VMM_FILES.console}.in`, `${VMM_FILES.console}.out`].map(
        (f) => rm(path.join(spec.dir, f), { force: true }),
      ),
    );
    await linkDrives(spec);
    await makeConsoleFifos(base);
    let vsock: HybridVsockListener | null = null;
    if (spec.channel === 'vsock')
      vsock = await listenHybridVsock(path.join(spec.dir, VMM_FILES.vsock), VSOCK_PORT);
    // Both FIFOs read-write for Firecracker: it never sees EOF or blocks opening them.
    const stdin = openSync(`${base}.in`, constants.O_RDWR);
    const stdout = openSync(`${base}.out`, constants.O_RDWR);
    const argv = [binary, '--api-sock', VMM_FILES.api];
    const started = Date.now();
    let spawned;
    try {
      spawned = await spawnVmm(argv, spec.dir, { stdin, stdout });
    } catch (err) {
      await vsock?.close();
      throw err;
    } finally {
      closeSync(stdin);
      closeSync(stdout);
    }
    const { child, pid } = spawned;
    vmLog.info({ pid, argv }, 'Firecracker spawned');
    const abort = new AbortController();
    child.once('exit', (code, signal) =>
      abort.abort(new Error(`Firecracker exited during launch (${signal ?? `code ${code}`})`)),
    );
    let client: RestClient | null = null;
    let consolePump: ConsolePump | null = null;
    try {
      const connect = { timeoutMs: opts.launchTimeoutMs, signal: abort.signal };
      await waitForApi(path.join(spec.dir, VMM_FILES.api), opts.launchTimeoutMs, abort.signal);
      client = api(spec.dir);
      consolePump = await consoleOf(spec.dir, spec.consoleLogBytes, connect, vmLog);
      if (spec.restore) {
        await client.call('PUT', '/snapshot/load', {
          snapshot_path: path.resolve(spec.restore.dir, STATE_FILE),
          mem_backend: {
            backend_type: 'File',
            backend_path: path.resolve(spec.restore.dir, MEM_FILE),
          },
          resume_vm: false,
          ...(spec.network.mode === 'bridge' && spec.network.tap
            ? { network_overrides: [{ iface_id: 'net0', host_dev_name: spec.network.tap }] }
            : {}),
        });
        await spec.restore.check;
        if (spec.restore.linkDown)
          vmLog.warn('Firecracker has no NIC link control: the restored VM wakes with its link up');
        await client.call('PATCH', '/vm', { state: 'Resumed' });
      } else {
        for (const r of requests) await client.call(r.method, r.path, r.body);
        await client.call('PUT', '/actions', { action_type: 'InstanceStart' });
      }
      vmLog.info({ pid, ms: Date.now() - started }, 'Firecracker running');
      const runtime: VmRuntime = {
        backend: FC_BACKEND,
        pid,
        startTime: spawned.startTime,
        accel: 'kvm',
        sockets: {
          api: path.join(spec.dir, VMM_FILES.api),
          console: base,
          ...(vsock ? { agent: vsock.path } : {}),
        },
      };
      return createApiVm({
        runtime,
        control: fcControl(client, version),
        console: consolePump,
        vsock,
        child,
        log: vmLog,
        agentConnectTimeoutMs: opts.agentConnectTimeoutMs,
      });
    } catch (err) {
      return launchFailed(
        FC_ID,
        err,
        { dir: spec.dir, child, client, console: consolePump, vsock },
        vmLog,
      );
    }
  }

  const identify: Hypervisor['identify'] = (runtime, dir) =>
    identifyVmm(runtime, dir, FC_BACKEND, ours);

  const attach: Hypervisor['attach'] = (runtime, dir, vmLog) =>
    attachVmm(
      FC_ID,
      {
        runtime,
        dir,
        identify,
        client: () => api(dir, 5000),
        ping: (client) => client.call('GET', '/'),
        console: () => consoleOf(dir, opts.consoleLogBytes, { timeoutMs: 5000 }, vmLog),
        control: (client) => fcControl(client, version),
        agentConnectTimeoutMs: opts.agentConnectTimeoutMs,
      },
      vmLog,
    );

  return {
    name: FC_BACKEND,
    capabilities: FC_CAPABILITIES,
    probe: async () => {
      const { binary: _binary, ...r } = await probe();
      return r;
    },
    launch,
    identify,
    attach,
    dispose: disposeVmm(FC_ID, identify),
    disposeOrphans: async (vmRoot, known, l) => disposeVmmOrphans(vmRoot, known, ours, l),
    stateProblem: async (state, spec) =>
      stateProblemOf(state, spec, FC_BACKEND, (await probe()).version ?? null),
  };
}
