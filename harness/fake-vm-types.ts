/**
 * The types the fake hypervisor (fake-vms.ts), its scripted agents
 * (fake-agent.ts) and its real-agent guests (fake-guest.ts) share.
 */
import type { MqttClient } from 'mqtt';
import type net from 'node:net';
import type { Agent, AgentOptions } from '../guest-agent/agent.js';
import type { PowerAction } from '../guest-agent/platform/types.js';
import type { Hypervisor, HypervisorCapabilities, LaunchSpec } from '../host/hypervisors/types.js';

export type AgentMode = 'ready' | 'silent' | 'garbage' | 'real';

export interface FakeOptions {
  name?: string;
  /** What the fake agent does once connected ('real': the real agent core, fake-guest.ts). */
  agent?: AgentMode;
  /** Agent options for mode 'real' (merged over quick test defaults). */
  realAgent?: Partial<AgentOptions>;
  /** Mode 'real': the guest takes this long to start its agent (a slow boot). */
  realAgentStartDelayMs?: number;
  /** Make launch throw. */
  failLaunch?: boolean;
  available?: boolean;
  /** Make attach throw as if the process were ours but its control socket dead. */
  failAttach?: boolean;
  /** Capabilities other than createFakeHypervisor's defaults (a backend that lacks some). */
  capabilities?: Partial<HypervisorCapabilities>;
  /**
   * Runs as a VM's vCPUs are about to go on (a resume, after a pause or a
   * save): what its guest does first, such as write its disks (the fake
   * guest writes none of its own).
   */
  onResume?: (vmId: string) => void | Promise<void>;
}

/** What the double keeps of one fake VM (the hypervisor side, shared with the guests). */
export interface FakeVm {
  server: net.Server;
  sockets: Set<net.Socket>;
  agents: Set<MqttClient>;
  root: string;
  vmId: string;
  pid: number;
  /** Mode 'real': the running agent instance (replaced on a guest reboot). */
  guest?: RealGuest;
  /** Mode 'real': sockets the daemon opened that no agent session took yet. */
  accepted: net.Socket[];
  /** Mode 'real': the telemetry interval the daemon put on the "kernel command line". */
  telemetryMs?: number;
}

/** One boot's worth of the real agent inside a fake VM. */
export interface RealGuest {
  readonly vmId: string;
  readonly agent: Agent;
  /** Process groups of the jobs this guest spawned (pgid = the job's pid). */
  readonly pgids: Set<number>;
  dead: boolean;
  /** What the agent asked the "init" for (power requests from the host). */
  readonly powerCalls: PowerAction[];
  /** The agent waits in openChannel for the daemon's next connection. */
  waiter: ((s: net.Socket) => void) | null;
  /** Publish a raw up message through this guest's channel (as a hostile guest would). */
  publishUp(kind: string, payload: Buffer, topicVmId?: string): void;
  /** Break the channel (both ends see it close); the VM and its jobs live on. */
  dropChannel(): void;
  /**
   * false: break the channel and keep the agent from getting a new one (the
   * host's connections wait); true: let it connect again. Jobs keep running.
   */
  setOnline(online: boolean): void;
  readonly online: boolean;
}

/** A job process a real-mode guest started. */
export interface SpawnedJob {
  vmId: string;
  pid: number;
  argv: string[];
}

export interface FakeHypervisor extends Hypervisor {
  options: FakeOptions;
  launched: number[];
  /** The launch specs, in launch order (what the daemon asked for). */
  specs: LaunchSpec[];
  /** Messages the fake agents received on their down topics (not in mode 'real'). */
  received: { vmId: string; kind: string; msg: unknown }[];
  /** Mode 'real': every job process spawned, in order. */
  spawned: SpawnedJob[];
  /** Mode 'real': the current agent instance of each VM ever launched, by VM id. */
  guests: Map<string, RealGuest>;
  /** Pids that dispose() ended (recovery of leftovers that are not re-attached). */
  disposed: number[];
}
