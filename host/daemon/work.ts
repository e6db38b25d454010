/**
 * The work a host runs: jobs, the pools that hold VMs ready for them and
 * the spare VMs forked ahead of ephemeral jobs, sharing one VM destroyer.
 */
import type { Bus } from '../broker/types.js';
import type { EventLog } from '../events/log.js';
import { createVmDestroyer } from '../jobs/destroyer.js';
import { createJobManager, DEFAULT_JOB_OPTIONS } from '../jobs/manager.js';
import { DEFAULT_OUTPUT_OPTIONS } from '../jobs/output.js';
import { createPoolManager } from '../jobs/pools.js';
import { createSpares } from '../jobs/spares.js';
import type { MvirtLogger } from '../log.js';
import type { Templates } from '../snapshots/templates.js';
import type { Store } from '../store/index.js';
import type { VmManager } from '../vm/manager.js';
import type { Topics } from '../../protocol/topics.js';
import type { DaemonOptions } from './options.js';

type JobDeps = Parameters<typeof createJobManager>[0];

export function createWork(d: {
  opts: DaemonOptions;
  store: Store;
  vms: VmManager;
  agents: JobDeps['agents'];
  events: EventLog;
  bus: Bus;
  topics: Topics;
  templates: Templates;
  log: MvirtLogger;
}) {
  const { opts, store, vms, agents, events, bus, topics, templates, log } = d;
  const destroyer = createVmDestroyer(vms, log.child({ component: 'job' }));
  const pools = createPoolManager({
    repo: store.pools,
    destroyer,
    vms,
    agents,
    events,
    bus,
    topics,
    log,
    templates,
    snapshots: store.snapshots,
  });
  const spares = createSpares({
    vms,
    templates,
    agents,
    events,
    destroyer,
    log,
    options: { count: opts.templates ? opts.spares : 0, idleMs: opts.spareIdleMs },
  });
  const jobs = createJobManager({
    repo: store.jobs,
    destroyer,
    vms,
    agents,
    pools,
    templates,
    spares,
    events,
    bus,
    topics,
    log,
    options: {
      ...DEFAULT_JOB_OPTIONS,
      output: { ...DEFAULT_OUTPUT_OPTIONS, retainBytes: opts.jobOutputBytes },
      agentGraceMs: opts.jobAgentGraceMs,
      ...(opts.defaultPool !== undefined ? { defaultPool: opts.defaultPool } : {}),
    },
  });
  return { pools, spares, jobs };
}
