/**
 * A dry run's plan (protocol/plan.ts), written as the operation's own checks
 * and steps go by. Each manager describes its methods with one of these; the
 * API answers with `done()`. Paths under the data dir are given relative to
 * it, as an operator sees them in `mvirt` output.
 */
import path from 'node:path';
import type { DryRunPlan, PlanCommand } from '../protocol/plan.js';

export interface PlanBuilder {
  /** A check the real call makes, passed (the real one throws where a dry run throws). */
  admit(check: string): PlanBuilder;
  step(...names: string[]): PlanBuilder;
  exec(argv: readonly string[]): PlanBuilder;
  qmp(execute: string, args?: Record<string, unknown>): PlanBuilder;
  agent(type: string, body?: Record<string, unknown>): PlanBuilder;
  signal(pid: number, signal: string): PlanBuilder;
  command(c: PlanCommand): PlanBuilder;
  create(...files: string[]): PlanBuilder;
  remove(...files: string[]): PlanBuilder;
  change(what: string): PlanBuilder;
  done(): DryRunPlan;
}

export function createPlan(method: string, dataDir?: string): PlanBuilder {
  const plan: DryRunPlan = {
    dryRun: true,
    method,
    admission: [],
    steps: [],
    commands: [],
    files: { create: [], remove: [] },
    changes: [],
  };
  const shown = (f: string): string => {
    if (!dataDir || !path.isAbsolute(f)) return f;
    const rel = path.relative(dataDir, f);
    if (rel.startsWith('..') || path.isAbsolute(rel)) return f;
    return f.endsWith('/') ? `${rel}/` : rel; // a folder stays one
  };
  const b: PlanBuilder = {
    admit: (c) => (plan.admission.push(c), b),
    step: (...n) => (plan.steps.push(...n), b),
    exec: (argv) => b.command({ kind: 'exec', argv: [...argv] }),
    qmp: (execute, args) =>
      b.command({ kind: 'qmp', execute, ...(args !== undefined ? { arguments: args } : {}) }),
    agent: (type, body) =>
      b.command({ kind: 'agent', type, ...(body !== undefined ? { body } : {}) }),
    signal: (pid, signal) => b.command({ kind: 'signal', pid, signal }),
    command: (c) => (plan.commands.push(c), b),
    create: (...f) => (plan.files.create.push(...f.map(shown)), b),
    remove: (...f) => (plan.files.remove.push(...f.map(shown)), b),
    change: (w) => (plan.changes.push(w), b),
    done: () => plan,
  };
  return b;
}
