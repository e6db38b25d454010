/**
 * The states of VMs and jobs, and the named subsets of them that the daemon,
 * the CLI and the dashboard reason with: the one place that spells a list of
 * states. No zod here: the dashboard's first bundle imports this module and
 * must not pull the schema library in (see host/dashboard/schemas.ts).
 */

export const VM_STATES = [
  'stopped',
  'starting',
  'ready',
  'busy',
  'running',
  'paused',
  'stopping',
  'failed',
  'suspended',
] as const;
export type VmState = (typeof VM_STATES)[number];

export const JOB_STATES = [
  'queued',
  'running',
  'succeeded',
  'failed',
  'timed_out',
  'cancelled',
  'lost',
] as const;
export type JobState = (typeof JOB_STATES)[number];

export const VM_KINDS = ['service', 'ephemeral'] as const;

/** A VM's network mode (records.ts NetworkSpec says what each means). */
export const NETWORK_MODES = ['none', 'user', 'bridge'] as const;
export type NetworkMode = (typeof NETWORK_MODES)[number];

/**
 * A volume is `available` (no VM lists it among its disks) or `attached`
 * (one VM read-write, or any number read-only). Creation and deletion are
 * the row's birth and end, not states.
 */
export const VOLUME_STATES = ['available', 'attached'] as const;
export type VolumeState = (typeof VOLUME_STATES)[number];
export const VOLUME_FORMATS = ['raw', 'qcow2'] as const;
export type VolumeFormat = (typeof VOLUME_FORMATS)[number];
export type VmKind = (typeof VM_KINDS)[number];

const member =
  <S extends string>(set: readonly S[]) =>
  (s: string): s is S =>
    (set as readonly string[]).includes(s);

// ---------------------------------------------------------------- VM subsets

/**
 * A VM at rest: no hypervisor process, holds no host resources; it can be
 * started or deleted. `suspended`: its memory is saved on disk and a start
 * resumes it instead of booting.
 */
export const INACTIVE_VM_STATES = [
  'stopped',
  'failed',
  'suspended',
] as const satisfies readonly VmState[];
export const isInactiveVm = member<VmState>(INACTIVE_VM_STATES);

/**
 * States in which a VM holds host resources: a hypervisor process may exist
 * (counted in the allocation; recovery looks for its process; kill applies).
 */
export const ACTIVE_VM_STATES: readonly VmState[] = VM_STATES.filter((s) => !isInactiveVm(s));
export const isActiveVm = member<VmState>(ACTIVE_VM_STATES);

/** Booted and not on its way down: a graceful stop applies, the console is live. */
export const LIVE_VM_STATES = [
  'starting',
  'ready',
  'busy',
  'running',
  'paused',
] as const satisfies readonly VmState[];
export const isLiveVm = member<VmState>(LIVE_VM_STATES);

/** Up and usable: what `vm.start {wait}` waits for; pause, graceful stop and reboot start from here. */
export const UP_VM_STATES = ['ready', 'busy', 'running'] as const satisfies readonly VmState[];
export const isUpVm = member<VmState>(UP_VM_STATES);

/** The agent is connected (idle or running jobs): jobs can be sent. */
export const AGENT_VM_STATES = ['ready', 'busy'] as const satisfies readonly VmState[];

/** A VM that can take a job now or once its boot ends (job.run {vm}). */
export const JOB_TARGET_VM_STATES = [
  'starting',
  ...AGENT_VM_STATES,
] as const satisfies readonly VmState[];
export const isJobTargetVm = member<VmState>(JOB_TARGET_VM_STATES);

/**
 * A VM with an agent that is, or will again be, usable: it keeps its jobs
 * across a daemon restart and counts as a pool member (`running` has no agent).
 */
export const AGENT_LIVE_VM_STATES = [
  'starting',
  'ready',
  'busy',
  'paused',
] as const satisfies readonly VmState[];
export const isAgentLiveVm = member<VmState>(AGENT_LIVE_VM_STATES);

/** Down or going down: waiting for a VM to come up ends with an error in these. */
export const DOWN_VM_STATES = [
  'stopping',
  'stopped',
  'failed',
  'suspended',
] as const satisfies readonly VmState[];
export const isDownVm = member<VmState>(DOWN_VM_STATES);

/** A VM whose memory and device state can be saved now (vm.snapshot, vm.suspend). */
export const SAVABLE_VM_STATES = [
  'ready',
  'busy',
  'running',
  'paused',
] as const satisfies readonly VmState[];
export const isSavableVm = member<VmState>(SAVABLE_VM_STATES);

/** A VM snapshot is `saving` until its files are complete and checked, then `ready`. */
export const SNAPSHOT_STATES = ['saving', 'ready'] as const;
export type SnapshotState = (typeof SNAPSHOT_STATES)[number];

// ---------------------------------------------------------------- job subsets

/** A job that has not ended yet. */
export const OPEN_JOB_STATES = ['queued', 'running'] as const satisfies readonly JobState[];

/** A job that has ended: its record no longer changes. */
export const TERMINAL_JOB_STATES: readonly JobState[] = JOB_STATES.filter(
  (s) => !(OPEN_JOB_STATES as readonly string[]).includes(s),
);
export const isTerminalJob = member<JobState>(TERMINAL_JOB_STATES);

/** The signals a job may be sent (job.signal, the agent's Signal). */
export const SIGNALS = [
  'SIGTERM',
  'SIGKILL',
  'SIGINT',
  'SIGHUP',
  'SIGQUIT',
  'SIGUSR1',
  'SIGUSR2',
  'SIGSTOP',
  'SIGCONT',
] as const;
