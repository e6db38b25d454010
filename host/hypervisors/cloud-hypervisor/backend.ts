/**
 * The cloud-hypervisor backend: `cloud-hypervisor --api-socket` in the VM's
 * folder, then the whole VM through its REST API (specs/cloud-hypervisor.yaml):
 * vm.create with direct kernel boot of the µOS, the serial console on a unix
 * socket, the agent over hybrid vsock, TAP networking for bridged VMs;
 * vm.boot or vm.restore; control, hot-plug and snapshots in control.ts.
 * The process runs in its own session and outlives mvirtd; attach() adopts
 * it again when its pid, start time and folder match and vm.info answers.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { VSOCK_PORT } from '../../../protocol/agent.js';
import { createApiVm } from '../api-vm.js';
import { startConsolePump, type ConsolePump } from '../console-pump.js';
import { hybridPortPath, listenHybridVsock, type HybridVsockListener } from '../hybrid-vsock.js';
import { createRestClient, waitForApi, type RestClient } from '../rest.js';
import type {
  Hypervisor,
  HypervisorCapabilities,
  LaunchSpec,
  ProbeResult,
  RunningVm,
  VmRuntime,
} from '../types.js';
import {
  disposeVmmOrphans,
  identifyVmm,
  linkDrives,
  spawnVmm,
  stateProblemOf,
  VMM_FILES,
} from '../vmm-common.js';
import { probeVmm } from '../vmm-probe.js';
import { attachVmm, checkLaunchable, disposeVmm, launchFailed } from '../vmm-backend.js';
import { buildVmConfig } from './config.js';
import { chControl, CH_BACKEND } from './control.js';

export { CH_BACKEND };

const CH_ID = { name: CH_BACKEND, label: 'cloud-hypervisor' };

export interface CloudHypervisorOptions {
  /** Default `cloud-hypervisor` on PATH (mvirtd --cloud-hypervisor-bin). */
  binary?: string;
  /** Where KVM is looked for (tests). */
  kvmPath?: string;
  /** From spawn until the API answers. */
  launchTimeoutMs?: number;
  /** How long connectAgent waits for the guest to dial (a boot's agent start included). */
  agentConnectTimeoutMs?: number;
  consoleLogBytes?: number;
  probeTimeoutMs?: number;
}

const DEFAULTS = {
  binary: 'cloud-hypervisor',
  kvmPath: '/dev/kvm',
  launchTimeoutMs: 10_000,
  // The guest dials once its agent runs: a whole boot (µOS, Node start).
  agentConnectTimeoutMs: 120_000,
  consoleLogBytes: 1024 * 1024,
  probeTimeoutMs: 5000,
} as const;

/** The capability map: what this backend's launch and control can really do. */
export const CH_CAPABILITIES: HypervisorCapabilities = {
  // vsock first: no network needed, the socket is the VM. tcp over a bridged NIC.
  channels: ['vsock', 'tcp'],
  pause: true,
  reboot: true,
  gracefulShutdown: true,
  console: true,
  directKernelBoot: true,
  // --kernel: an ELF with a PVH entry (its bzImage support went with 0.x).
  kernelFormats: ['elf'],
  hotplugDisks: true,
  liveDiskSnapshots: false,
  snapshots: true,
  // No fw_cfg: a restored guest has no place to read its new identity from
  // (vmId, hostname, entropy, token), so its state resumes only as the VM it
  // was saved from (vm.suspend), never as a fork; until the agent can take
  // its identity over the vsock channel (issue 15, item 4).
  forks: false,
  accel: ['kvm'],
};

const isProgram = (binary: string) => (argv: string[]) =>
  path.basename(argv[0] ?? '') === path.basename(binary) && argv.includes('--api-socket');

export function createCloudHypervisorBackend(
  options: CloudHypervisorOptions,
  log: Logger,
): Hypervisor {
  const opts = { ...DEFAULTS, ...options };
  let probed: Promise<ProbeResult & { binary: string | null }> | null = null;
  const probe = () =>
    (probed ??= probeVmm({
      binary: opts.binary,
      name: CH_BACKEND,
      option: '--cloud-hypervisor-bin',
      kvmPath: opts.kvmPath,
      timeoutMs: opts.probeTimeoutMs,
    }).then((r) => {
      log
        .child({ backend: CH_BACKEND })
        .info({ available: r.available, version: r.version, reason: r.reason }, 'probed');
      return r;
    }));
  const version = async () => (await probe()).version ?? 'unknown';
  const ours = isProgram(opts.binary);
  const api = (dir: string, timeoutMs = 30_000): RestClient =>
    createRestClient({
      socketPath: path.join(dir, VMM_FILES.api),
      base: '/api/v1',
      name: CH_BACKEND,
      timeoutMs,
    });

  const consoleOf = (
    dir: string,
    maxLogBytes: number,
    connect: { timeoutMs: number; signal?: AbortSignal },
    vmLog: Logger,
  ) =>
    startConsolePump({
      source: { kind: 'socket', path: path.join(dir, VMM_FILES.consoleSocket) },
      logFile: path.join(dir, VMM_FILES.consoleLog),
      maxLogBytes,
      connect,
      log: vmLog,
    });

  async function launch(spec: LaunchSpec, vmLog: Logger): Promise<RunningVm> {
    const p = await probe();
    const binary = checkLaunchable(CH_ID, p, spec);
    // Refused before anything runs: a bad spec (channel, network) never spawns.
    const config = buildVmConfig(spec);
    await mkdir(spec.dir, { recursive: true, mode: 0o700 });
    await Promise.all(
      [VMM_FILES.api, VMM_FILES.consoleSocket, VMM_FILES.vsock].map((f) =>
        rm(path.join(spec.dir, f), { force: true }),
      ),
    );
    await linkDrives(spec);
    const vsockUds = path.join(spec.dir, VMM_FILES.vsock);
    let vsock: HybridVsockListener | null = null;
    let consolePump: ConsolePump | null = null;
    let client: RestClient | null = null;
    const started = Date.now();
    if (spec.channel === 'vsock') vsock = await listenHybridVsock(vsockUds, VSOCK_PORT);
    const argv = [binary, '--api-socket', `path=${VMM_FILES.api}`];
    let spawned;
    try {
      spawned = await spawnVmm(argv, spec.dir);
    } catch (err) {
      await vsock?.close();
      throw err;
    }
    const { child, pid } = spawned;
    vmLog.info({ pid, argv }, 'cloud-hypervisor spawned');
    const abort = new AbortController();
    child.once('exit', (code, signal) =>
      abort.abort(new Error(`cloud-hypervisor exited during launch (${signal ?? `code ${code}`})`)),
    );
    try {
      const connect = { timeoutMs: opts.launchTimeoutMs, signal: abort.signal };
      await waitForApi(path.join(spec.dir, VMM_FILES.api), opts.launchTimeoutMs, abort.signal);
      client = api(spec.dir);
      if (spec.restore) {
        // The snapshot's config names the same relative paths, now in this VM's folder.
        await client.call('PUT', '/vm.restore', {
          source_url: `file://${path.resolve(spec.restore.dir)}`,
        });
        consolePump = await consoleOf(spec.dir, spec.consoleLogBytes, connect, vmLog);
        // Loaded, not yet run: a state that fails its check never executes.
        await spec.restore.check;
        if (spec.restore.linkDown)
          vmLog.warn(
            'cloud-hypervisor has no NIC link control: the restored VM wakes with its link up',
          );
        await client.call('PUT', '/vm.resume');
      } else {
        await client.call('PUT', '/vm.create', config);
        await client.call('PUT', '/vm.boot');
        consolePump = await consoleOf(spec.dir, spec.consoleLogBytes, connect, vmLog);
      }
      vmLog.info({ pid, ms: Date.now() - started }, 'cloud-hypervisor running');
      const runtime: VmRuntime = {
        backend: CH_BACKEND,
        pid,
        startTime: spawned.startTime,
        accel: 'kvm',
        sockets: {
          api: path.join(spec.dir, VMM_FILES.api),
          console: path.join(spec.dir, VMM_FILES.consoleSocket),
          ...(vsock ? { agent: vsock.path } : {}),
        },
      };
      return createApiVm({
        runtime,
        control: chControl({ api: client, dir: spec.dir, version, log: vmLog }),
        console: consolePump,
        vsock,
        child,
        log: vmLog,
        agentConnectTimeoutMs: opts.agentConnectTimeoutMs,
      });
    } catch (err) {
      return launchFailed(
        CH_ID,
        err,
        { dir: spec.dir, child, client, console: consolePump, vsock },
        vmLog,
      );
    }
  }

  const identify: Hypervisor['identify'] = (runtime, dir) =>
    identifyVmm(runtime, dir, CH_BACKEND, ours);

  const attach: Hypervisor['attach'] = (runtime, dir, vmLog) =>
    attachVmm(
      CH_ID,
      {
        runtime,
        dir,
        identify,
        client: () => api(dir, 5000),
        // Answering is not enough: the VMM must still hold a VM.
        ping: (client) => client.call('GET', '/vm.info'),
        console: () => consoleOf(dir, opts.consoleLogBytes, { timeoutMs: 5000 }, vmLog),
        control: (client) => chControl({ api: client, dir, version, log: vmLog }),
        agentConnectTimeoutMs: opts.agentConnectTimeoutMs,
      },
      vmLog,
    );

  return {
    name: CH_BACKEND,
    capabilities: CH_CAPABILITIES,
    probe: async () => {
      const { binary: _binary, ...r } = await probe();
      return r;
    },
    launch,
    identify,
    attach,
    dispose: disposeVmm(CH_ID, identify),
    disposeOrphans: async (vmRoot, known, l) => disposeVmmOrphans(vmRoot, known, ours, l),
    stateProblem: async (state, spec) =>
      stateProblemOf(state, spec, CH_BACKEND, (await probe()).version ?? null),
  };
}

/** Exported for the tests: the hybrid-vsock path the guest's agent reaches the host on. */
export const chAgentSocket = (dir: string): string =>
  hybridPortPath(path.join(dir, VMM_FILES.vsock), VSOCK_PORT);
