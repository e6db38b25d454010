/**
 * `--dry-run`: the command runs as usual up to its first change, which is
 * sent as a dry run (protocol/plan.ts); its plan is printed and the command
 * ends there, successfully. What it read before (a VM's state) it read for
 * real; nothing after the first change is run, since a later step would
 * depend on a change that was not made.
 */
import type { DryRunPlan, PlanCommand } from '../../protocol/rpc.js';

/** Thrown to end a command at its first change under --dry-run (dry-run.ts); run.ts prints it. */
export class DryRunAnswer extends Error {
  constructor(readonly plan: DryRunPlan) {
    super(`dry run of ${plan.method}`);
    this.name = 'DryRunAnswer';
  }
}

/** A shell-like rendering of an argv (quoted where a shell would need it). */
const shellQuote = (argv: readonly string[]): string =>
  argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');

function command(c: PlanCommand): string {
  switch (c.kind) {
    case 'exec':
      return `$ ${shellQuote(c.argv)}`;
    case 'qmp':
      return `QMP ${c.execute}${c.arguments ? ` ${JSON.stringify(c.arguments)}` : ''}`;
    case 'agent':
      return `agent ${c.type}${c.body ? ` ${JSON.stringify(c.body)}` : ''}`;
    case 'signal':
      return `${c.signal} → pid ${c.pid}`;
  }
}

export function formatPlan(p: DryRunPlan): string {
  const lines = [`Dry run of ${p.method}: nothing was changed.`];
  const section = (title: string, items: string[]) => {
    if (items.length > 0) lines.push('', `${title}:`, ...items.map((i) => `  ${i}`));
  };
  section('Checks passed', p.admission);
  section(
    'Steps',
    p.steps.map((s, i) => `${i + 1}. ${s}`),
  );
  section('Commands', p.commands.map(command));
  section('Files it would create (in the data dir)', p.files.create);
  section('Files it would remove (in the data dir)', p.files.remove);
  section('Changes', p.changes);
  if (p.steps.length === 0 && p.changes.length === 0) lines.push('', 'Nothing to do.');
  return `${lines.join('\n')}\n`;
}
