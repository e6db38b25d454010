/**
 * Boot as a list of named steps: each one is timed in the log, and when one
 * fails the completed ones are undone in reverse order so that a failed boot
 * leaves no process, runtime row or socket behind.
 */
import type { MvirtLogger } from '../log.js';
import type { PlanBuilder } from '../plan.js';

export interface Step<C> {
  name: string;
  run(ctx: C): Promise<void> | void;
  /** Undo what `run` did; called only when a later step fails. */
  undo?(ctx: C): Promise<void> | void;
  /**
   * A dry run of this step (protocol/plan.ts): its checks, and what it would
   * create, start or send, written to the plan; nothing changed. Without it the
   * step is only named.
   */
  plan?(ctx: C, plan: PlanBuilder): Promise<void> | void;
}

export class StepError extends Error {
  constructor(
    readonly step: string,
    readonly error: unknown,
  ) {
    super(`${step}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    this.name = 'StepError';
  }
}

export async function runSteps<C>(
  steps: readonly Step<C>[],
  ctx: C,
  log: MvirtLogger,
  /** Called before rolling back, so callers can record why the boot failed. */
  onFail?: (step: string, err: unknown) => void,
): Promise<void> {
  const done: Step<C>[] = [];
  for (const step of steps) {
    const t0 = performance.now();
    try {
      await step.run(ctx);
    } catch (err) {
      log.warn(
        { step: step.name, ms: Math.round(performance.now() - t0), err },
        'boot step failed; rolling back',
      );
      onFail?.(step.name, err);
      for (const d of done.reverse()) {
        try {
          await d.undo?.(ctx);
        } catch (undoErr) {
          log.error({ step: d.name, err: undoErr }, 'rollback step failed');
        }
      }
      throw new StepError(step.name, err);
    }
    log.debug({ step: step.name, ms: Math.round(performance.now() - t0) }, 'boot step done');
    done.push(step);
  }
}

/** The dry run of a list of steps: each named in the plan, in order, and planned. */
export async function planSteps<C>(
  steps: readonly Step<C>[],
  ctx: C,
  plan: PlanBuilder,
): Promise<void> {
  for (const step of steps) {
    plan.step(step.name);
    await step.plan?.(ctx, plan);
  }
}
