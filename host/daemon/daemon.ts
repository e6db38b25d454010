/**
 * Wiring: store → broker → event log → telemetry (roll-ups, hub) →
 * hypervisors and images → agent sessions → VM manager → job manager → API →
 * host status → HTTP (/metrics, dashboard); recovery before the API serves
 * anyone, so the first answer reflects re-attached VMs. `close()` undoes it
 * in reverse; access.ts, work.ts, observe.ts and apis.ts hold parts of it.
 */
import { MvirtError } from '../../protocol/errors.js';
import { mkdir, rmdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createRoutes } from '../api/routes.js';
import { createGuestIo } from './guest-io.js';
import { createPortStreams, directPortSend } from '../ports/streams.js';
import { createApis } from './apis.js';
import { systemInfo, type SystemDeps } from '../api/handlers/system.js';
import { createAgentSessions } from '../agent/sessions.js';
import { createHypervisorRegistry } from '../hypervisors/index.js';
import type { MvirtLogger } from '../log.js';
import { createStore } from '../store/index.js';
import { createImageStore } from '../vm/images.js';
import { createImageManager } from '../images/manager.js';
import { createVmManager, DEFAULT_TIMEOUTS } from '../vm/manager.js';
import { hostRoot, topics as topicsFor } from '../../protocol/topics.js';
import { isActiveVm } from '../../protocol/states.js';
import type { DaemonOptions } from './options.js';
import { createOrderedBus } from './ordered-bus.js';
import { createVolumeFiles } from '../volumes/files.js';
import { createVolumeTransitions } from '../volumes/transition.js';
import { createVolumeAttach } from '../volumes/attach.js';
import { createVolumeManager } from '../volumes/manager.js';
import { createQemuImg } from '../volumes/qemu-img.js';
import { createStatusPublisher } from './status.js';
import { parseHostPort } from '../broker/options.js';
import { createRecords, observeHost } from './observe.js';
import { createHttpAuth } from '../http/auth.js';
import { startHttpServer, type HttpServer } from '../http/server.js';
import { dashboardAssets } from '../dashboard/assets.js';
import { VERSION } from './version.js';
import { createSnapshotFiles } from '../snapshots/files.js';
import { createSnapshotManager } from '../snapshots/manager.js';
import { createTemplates } from '../snapshots/templates.js';
import { createUplink } from '../uplink/link.js';
import { createMirrorBus, uplinkSender } from '../uplink/mirror.js';
import type { Daemon, DaemonOverrides } from './types.js';
import { announceStart } from './announce.js';
import { openAccess } from './access.js';
import { createWork } from './work.js';

export async function startDaemon(
  opts: DaemonOptions,
  log: MvirtLogger,
  overrides: DaemonOverrides = {},
): Promise<Daemon> {
  const vmDir = path.join(opts.dataDir, 'vm');
  await mkdir(vmDir, { recursive: true, mode: 0o700 });
  const root = hostRoot(opts.prefix, opts.hostId);
  const t = topicsFor(root);

  const store = createStore(path.join(opts.dataDir, 'mvirt.db'), log.child({ component: 'store' }));
  const cleanup: (() => Promise<void> | void)[] = [() => store.close()];
  try {
    const { network, sessions, users, tls, gate, broker } = await openAccess({
      opts,
      store,
      root,
      vmDir,
      cleanup,
      log,
    });
    // --uplink: public topics are mirrored to the external broker (host/uplink/).
    const uplink = opts.uplink
      ? createUplink({
          options: opts.uplink,
          statusTopic: t.status,
          hostId: opts.hostId,
          senderOf: uplinkSender({
            prefix: opts.prefix,
            broker: opts.uplink.broker,
            access: opts.uplink.access,
          }),
          log: log.child({ component: 'uplink' }),
        })
      : null;
    if (uplink) cleanup.unshift(() => uplink.close());
    const bus = uplink
      ? createMirrorBus(createOrderedBus(broker), uplink, root)
      : createOrderedBus(broker);
    broker.setLastWill({
      topic: t.status,
      payload: JSON.stringify({ hostId: opts.hostId, online: false }),
    });

    const { events, rollups, telemetry, sampler } = createRecords({
      opts,
      store,
      bus,
      topics: t,
      log,
      cleanup,
      rollupFlushMs: overrides.rollupFlushMs,
    });

    const hypervisors = createHypervisorRegistry(
      overrides.hypervisors
        ? { backends: overrides.hypervisors }
        : {
            qemu: {
              confine: !opts.unconfined,
              ramDir: opts.ramDir,
              vsockDir: path.join(opts.dataDir, 'vsock'),
              helperCacheDir: path.join(opts.dataDir, 'cache', 'helpers'),
            },
            cloudHypervisor: { binary: opts.cloudHypervisorBin },
            firecracker: { binary: opts.firecrackerBin, jailer: opts.jailerBin },
          },
      log.child({ component: 'hypervisors' }),
    );
    if (!hypervisors.get(opts.defaultBackend))
      throw new MvirtError(
        'CONFIG_INVALID',
        `--default-backend ${opts.defaultBackend}: no such backend; known: ${hypervisors.names().join(', ')}`,
      );
    const images = createImageStore(opts.imagesDir, path.join(opts.dataDir, 'cache', 'kernels'));
    const limits = { vcpus: opts.maxVcpus, memoryMiB: opts.maxMemoryMiB, maxVms: opts.maxVms };
    const agents = createAgentSessions({
      bus,
      attachChannel: (id, s) => broker.attachAgentChannel(id, s),
      topics: t,
      log,
      guest: events.guest,
    });
    agents.listen({ telemetry: (id, m) => telemetry.report(id, m) });
    broker.onGuestAgent((vmId, handle) => agents.guest(vmId, handle));
    const portStreams = createPortStreams({
      agents,
      send: directPortSend(broker, t, (id) => agents.connected(id)),
      log,
      refused: (id, what) => events.guest.refuse(id, what),
    });
    // Volumes (issue 13): files under <data-dir>/volumes/, one queue of changes.
    const volumeFiles = createVolumeFiles(path.join(opts.dataDir, 'volumes'));
    await volumeFiles.init();
    const volumeLog = log.child({ component: 'volume' });
    const volumeTransitions = createVolumeTransitions({
      store,
      events,
      bus,
      topics: t,
      log: volumeLog,
    });
    const volumeAttach = createVolumeAttach({
      store,
      files: volumeFiles,
      transitions: volumeTransitions,
    });
    // VM snapshots (issue 14): <data-dir>/snapshots/<id>/.
    const snapshotFiles = createSnapshotFiles(path.join(opts.dataDir, 'snapshots'));
    const vms = createVmManager({
      store,
      events,
      snapshotFiles,
      volumes: {
        attach: volumeAttach,
        files: volumeFiles,
        // Forks' disks, made by the volume manager (created below; called only once running).
        copies: {
          copyIn: (p) => volumes.copyIn(p),
          planCopies: (list) => volumes.plan.copies(list),
          delete: (ref) => volumes.delete(ref),
        },
      },
      broker: bus,
      hypervisors,
      images,
      network,
      agents,
      listening: (topic) => broker.hasSubscriber(topic),
      topics: t,
      log,
      options: {
        ...DEFAULT_TIMEOUTS,
        ...(opts.telemetryIntervalMs !== undefined
          ? { telemetryMs: opts.telemetryIntervalMs }
          : {}),
        vmDir,
        defaults: {
          vcpus: opts.defaultVcpus,
          memoryMiB: opts.defaultMemoryMiB,
          image: opts.defaultImage,
          backend: opts.defaultBackend,
        },
        limits,
        bootTimeoutMs: opts.bootTimeoutMs,
        stopTimeoutMs: opts.stopTimeoutMs,
        consoleLogBytes: 1024 * 1024,
      },
    });

    const volumes = createVolumeManager({
      store,
      files: volumeFiles,
      qemuImg: createQemuImg(),
      transitions: volumeTransitions,
      vmActive: (id) => {
        const v = store.vms.get(id);
        return v !== undefined && isActiveVm(v.state);
      },
      vms: vms.disks,
      log,
      options: {
        maxBytes: opts.storageMaxGiB === null ? null : opts.storageMaxGiB * 1024 ** 3,
        importDir: opts.volumeImportDir,
      },
    });

    const snapshots = createSnapshotManager({
      store,
      files: snapshotFiles,
      images,
      vms,
      events,
      log,
      dataDir: opts.dataDir,
    });

    const templates = createTemplates({
      store,
      images,
      vms,
      snapshots: { take: snapshots.take, delete: (ref) => snapshots.delete(ref, { force: true }) },
      log,
      enabled: opts.templates,
    });

    const { pools, spares, jobs } = createWork({
      opts,
      store,
      vms,
      agents,
      events,
      bus,
      topics: t,
      templates,
      log,
    });

    const sysDeps: SystemDeps = {
      host: {
        hostId: opts.hostId,
        version: VERSION,
        cpus: os.availableParallelism(),
        memoryMiB: Math.floor(os.totalmem() / (1024 * 1024)),
      },
      limits,
      vms,
      hypervisors,
      images,
      storage: volumes.capacity,
      labels: opts.labels,
      ...(uplink ? { uplink: () => uplink.info() } : {}),
    };
    const { files, ports } = createGuestIo({
      agents,
      vms,
      events,
      streams: portStreams,
      broker,
      ownerOfVm: (id) => store.owners.get('vm', id),
      prefix: opts.prefix,
      subnet: opts.subnet,
      log,
    });
    cleanup.unshift(() => files.close());
    const routes = createRoutes({
      ...sysDeps,
      files,
      ports,
      vms,
      snapshots,
      events,
      jobs,
      pools,
      rollups,
      volumes,
      imageManager: createImageManager({ options: opts, store, events, log }),
    });
    // The API on the host's broker and, with --uplink, the same routes and checks over it.
    const apis = createApis({
      bus,
      uplink,
      topics: t,
      routes,
      store,
      vms,
      snapshots,
      audit: (e) => void events.append(e),
      log,
      fleet: {
        prefix: opts.prefix,
        hostId: opts.hostId,
        labels: opts.labels,
        limits,
        images,
        pools,
        jobs,
      },
    });
    const status = createStatusPublisher({
      bus,
      topic: t.status,
      hostId: opts.hostId,
      info: async () => {
        const figures = sampler.sample();
        return {
          ...(await systemInfo(sysDeps)),
          figures,
          broker: broker.stats(),
          jobs: jobs.countByState(),
        };
      },
      intervalMs: opts.statusIntervalMs,
      log,
    });

    // Probe backends early: KVM probing takes a while and system.info needs it.
    for (const name of hypervisors.names()) void hypervisors.probe(name);
    await agents.start();
    await snapshots.recover(); // before the VMs: a fork's start reads its snapshot
    await vms.startup(); // recovery
    jobs.recover();
    const prometheus = observeHost({
      hostId: opts.hostId,
      host: sysDeps.host,
      sampler,
      vms,
      jobs,
      telemetry,
      broker,
      status,
      uplink,
    });
    await apis.start();
    await status.start();
    // In the background: mvirtd serves locally whether the external broker is up or not.
    uplink?.start();
    let http: HttpServer | null = null;
    if (opts.http) {
      http = await startHttpServer({
        listen: parseHostPort(opts.http, '--http'),
        auth: createHttpAuth({ users }),
        tls,
        gate,
        sessions,
        hostId: opts.hostId,
        root,
        metrics: async () => ({
          contentType: prometheus.contentType,
          body: await prometheus.metrics(),
        }),
        assets: dashboardAssets(),
        broker,
        log,
      });
      cleanup.unshift(() => http?.close());
    }
    announceStart({
      opts,
      root,
      events,
      log,
      addresses: broker.addresses,
      http,
      tls: tls !== null,
    });

    let closing: Promise<void> | undefined;
    return {
      broker,
      store,
      vms,
      agents,
      events,
      api: apis.api,
      uplink,
      topics: t,
      http,
      tls,
      reloadTls() {
        if (!tls) return;
        try {
          tls.reload();
          log.info({ cert: tls.files.cert }, 'TLS certificate and key reloaded');
        } catch (err) {
          log.error({ err }, 'TLS reload failed; the previous certificate stays in use');
        }
      },
      close: () =>
        (closing ??= (async () => {
          await apis.close();
          ports.closeAll();
          spares.close();
          await jobs.close();
          await pools.close();
          await vms.shutdown(opts.stopVmsOnExit);
          // The RAM folder goes with the last VM (it is made again at the next launch).
          if (opts.ramDir) await rmdir(opts.ramDir).catch(() => undefined);
          await agents.close();
          events.append({
            level: 'audit',
            component: 'daemon',
            message: `mvirtd stopped (${opts.stopVmsOnExit ? 'VMs stopped' : 'VMs left running'})`,
            objects: [`host:${opts.hostId}`],
          });
          await status.stop();
          for (const c of cleanup) await c();
        })()),
    };
  } catch (err) {
    for (const c of cleanup) await Promise.resolve(c()).catch(() => undefined);
    throw err;
  }
}
