/**
 * A budget per VM for everything its agent sends (issue 12): packets and
 * bytes per second, each a token bucket. The frame guard charges every chunk
 * it reads from an agent stream; once a bucket is in debt it stops reading
 * that stream until the debt is paid, so a flooding guest is slowed by flow
 * control on its own channel (its writes block in the guest) and mvirtd
 * buffers nothing more than the chunk in hand.
 *
 * One budget per VM, shared by all its streams: a guest that restarts its
 * session or opens a second TCP connection does not get a fresh allowance.
 *
 * Why these defaults: the receive path costs about 225 µs of mvirtd CPU per
 * agent message (bench/telemetry, 2 cores, 2026-11), so 1,000 messages a
 * second keep a flooding VM near the goal of a quarter of a core; a
 * busy agent sends far fewer (job output goes in chunks of up to 128 KiB,
 * telemetry once a second). 32 MiB/s is above what a guest moves through
 * virtio-serial under TCG here, so only a flood ever meets it.
 */
export interface AgentBudgetLimits {
  packetsPerS: number;
  packetBurst: number;
  bytesPerS: number;
  byteBurst: number;
}

export const DEFAULT_AGENT_BUDGET: AgentBudgetLimits = {
  packetsPerS: 1000,
  packetBurst: 2000,
  bytesPerS: 32 * 1024 * 1024,
  byteBurst: 8 * 1024 * 1024,
};

export interface AgentBudget {
  /** Spend what was just read; returns how long to stop reading (ms, 0 = go on). */
  charge(packets: number, bytes: number): number;
  /** Times a stream had to wait, and for how long in all (for logs and tests). */
  readonly throttled: { times: number; ms: number };
}

interface Buckets extends AgentBudget {
  /** When both buckets will be full again if nothing more is charged. */
  fullAt(): number;
}

export function createAgentBudget(
  limits: AgentBudgetLimits,
  now: () => number = () => performance.now(),
): Buckets {
  let packets = limits.packetBurst;
  let bytes = limits.byteBurst;
  let at = now();
  const throttled = { times: 0, ms: 0 };
  return {
    charge(p, b) {
      const t = now();
      const s = (t - at) / 1000;
      at = t;
      packets = Math.min(limits.packetBurst, packets + s * limits.packetsPerS) - p;
      bytes = Math.min(limits.byteBurst, bytes + s * limits.bytesPerS) - b;
      // A debt is paid at the refill rate: wait until both buckets are back at 0.
      const wait = Math.max(
        packets < 0 ? (-packets / limits.packetsPerS) * 1000 : 0,
        bytes < 0 ? (-bytes / limits.bytesPerS) * 1000 : 0,
      );
      if (wait > 0) {
        throttled.times++;
        throttled.ms += wait;
      }
      return Math.ceil(wait);
    },
    throttled,
    fullAt: () =>
      at +
      1000 *
        Math.max(
          (limits.packetBurst - packets) / limits.packetsPerS,
          (limits.byteBurst - bytes) / limits.bytesPerS,
        ),
  };
}

/**
 * The budgets of VMs by id. A budget whose buckets have refilled is the same
 * as a new one, so such entries are dropped (swept at most once per refill
 * time of an empty budget): ephemeral VMs leave nothing behind, and a guest that
 * closes and reopens its stream still finds its debt.
 */
export function createAgentBudgets(
  limits: AgentBudgetLimits,
  now: () => number = () => performance.now(),
) {
  const refillMs =
    1000 * Math.max(limits.packetBurst / limits.packetsPerS, limits.byteBurst / limits.bytesPerS);
  const byVm = new Map<string, Buckets>();
  let sweptAt = now();

  function sweep(t: number): void {
    if (t - sweptAt < refillMs) return;
    sweptAt = t;
    for (const [id, b] of byVm) if (b.fullAt() <= t) byVm.delete(id);
  }

  function entry(vmId: string) {
    let b = byVm.get(vmId);
    if (!b) byVm.set(vmId, (b = createAgentBudget(limits, now)));
    return b;
  }

  return {
    /**
     * The VM's budget, looked up on every charge: all streams of a VM share
     * one entry, whichever of them (re)created it.
     */
    of(vmId: string): AgentBudget {
      sweep(now());
      entry(vmId);
      return {
        charge(p, b) {
          sweep(now());
          return entry(vmId).charge(p, b);
        },
        get throttled() {
          return entry(vmId).throttled;
        },
      };
    },
    get size() {
      return byVm.size;
    },
  };
}

export type AgentBudgets = ReturnType<typeof createAgentBudgets>;
