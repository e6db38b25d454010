/**
 * What mvirtd publishes about jobs and VMs, recorded from the start for
 * tests and benches that drive real VMs (the floods, the takeover): a test
 * awaits a state on it instead of polling the API.
 */
import type { JobRecord, JobState, VmRecord } from '../protocol/rpc.js';
import { matches } from './client.js';
import { createConditions } from './conditions.js';
import { connectController, nextClientId, type DaemonAddress } from './connect.js';
import { HOSTILE_AGENT_VERSION } from './hostile-guest.js';

/**
 * Job and VM state records as mvirtd publishes them, kept from the start (a
 * job may end before the caller knows its id). Output topics are left out on
 * purpose: a flood of them must not fill the test process.
 */
export interface StateWatch {
  jobStates(jobId: string): JobRecord[];
  vmStates(vmId: string): VmRecord[];
  /** Resolve with fn()'s value once it is not undefined (checked on every state message). */
  until<T>(fn: () => T | undefined, what: string, timeoutMs: number): Promise<T>;
  job(jobId: string, states: readonly JobState[], timeoutMs: number): Promise<JobRecord>;
  close(): Promise<void>;
}

export async function watchStates(d: DaemonAddress): Promise<StateWatch> {
  const client = await connectController(d.url, { clientId: nextClientId('states') });
  const jobs = new Map<string, JobRecord[]>();
  const vms = new Map<string, VmRecord[]>();
  const conditions = createConditions();
  client.on('message', (topic, payload) => {
    if (payload.length === 0) return;
    const parts = topic.split('/');
    const id = parts[parts.length - 2]!;
    const add = <T>(into: Map<string, T[]>): void => {
      into.set(id, [...(into.get(id) ?? []), JSON.parse(payload.toString()) as T]);
    };
    if (matches(`${d.root}/job/+/state`, topic)) add(jobs);
    else add(vms);
    conditions.notify();
  });
  await client.subscribeAsync([`${d.root}/job/+/state`, `${d.root}/vm/+/state`], { qos: 1 });
  const w: StateWatch = {
    jobStates: (id) => jobs.get(id) ?? [],
    vmStates: (id) => vms.get(id) ?? [],
    until: (fn, what, timeoutMs) => conditions.until(fn, what, timeoutMs),
    job: (jobId, states, timeoutMs) =>
      w.until(
        () => w.jobStates(jobId).find((r) => states.includes(r.state)),
        `job ${jobId} ${states.join('|')} (seen: ${w
          .jobStates(jobId)
          .map((r) => r.state)
          .join(',')})`,
        timeoutMs,
      ),
    close: () => client.endAsync(),
  };
  return w;
}

/**
 * A VM whose channel a hostile job took over is its own again: after the
 * hostile hello (HOSTILE_AGENT_VERSION) among its state records from index
 * `from` on, one with its own agent's version and `ready`.
 */
export function ownAgentBack(
  states: StateWatch,
  vm: VmRecord,
  from: number,
  timeoutMs: number,
): Promise<VmRecord> {
  return states.until(
    () => {
      const since = states.vmStates(vm.id).slice(from);
      const h = since.findIndex((v) => v.agentVersion === HOSTILE_AGENT_VERSION);
      if (h < 0) return undefined;
      return since.slice(h).find((v) => v.agentVersion === vm.agentVersion && v.state === 'ready');
    },
    `VM ${vm.name}: its own agent back and the VM ready`,
    timeoutMs,
  );
}
