/**
 * The VM state machine (DESIGN: VM life). This table is the only place that
 * says which state may follow which; `transition()` in the manager refuses
 * anything else.
 */
import type { VmState } from '../../protocol/rpc.js';

export const TRANSITIONS: Readonly<Record<VmState, readonly VmState[]>> = {
  stopped: ['starting'],
  // running: an image without an agent; stopping: stop or kill during boot.
  starting: ['ready', 'running', 'stopping', 'failed'],
  // starting: reboot; stopped: the guest powered itself off.
  ready: ['busy', 'paused', 'starting', 'stopping', 'failed', 'stopped'],
  busy: ['ready', 'paused', 'starting', 'stopping', 'failed', 'stopped'],
  running: ['paused', 'starting', 'stopping', 'failed', 'stopped'],
  // Resume returns to the state the VM was paused in.
  paused: ['ready', 'busy', 'running', 'stopping', 'failed', 'stopped'],
  stopping: ['stopped', 'failed'],
  failed: ['starting'],
};

export const canTransition = (from: VmState, to: VmState): boolean =>
  TRANSITIONS[from].includes(to);
