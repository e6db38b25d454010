/**
 * The VM state machine (DESIGN: VM life). This table is the only place that
 * says which state may follow which; `transition()` in the manager refuses
 * anything else.
 */
import type { VmState } from '../../protocol/rpc.js';

export const TRANSITIONS: Readonly<Record<VmState, readonly VmState[]>> = {
  stopped: ['starting'],
  // running: an image without an agent; stopping: stop or kill during boot.
  // suspended: a resume from saved state failed; the state is kept for another try.
  starting: ['ready', 'running', 'stopping', 'failed', 'suspended'],
  // starting: reboot; stopped: the guest powered itself off.
  ready: ['busy', 'paused', 'starting', 'stopping', 'failed', 'stopped'],
  busy: ['ready', 'paused', 'starting', 'stopping', 'failed', 'stopped'],
  running: ['paused', 'starting', 'stopping', 'failed', 'stopped'],
  // Resume returns to the state the VM was paused in.
  // suspended: its state was saved (vm.suspend pauses first) and the process ended.
  paused: ['ready', 'busy', 'running', 'stopping', 'failed', 'stopped', 'suspended'],
  stopping: ['stopped', 'failed'],
  failed: ['starting'],
  // A start resumes it from its saved state; a stop drops that state.
  suspended: ['starting', 'stopped'],
};

export const canTransition = (from: VmState, to: VmState): boolean =>
  TRANSITIONS[from].includes(to);
