/**
 * The first words of mvirt's commands, for what must know them before the
 * command table is loaded: start.ts keys the code cache by them. The table
 * (table.ts) and this list are checked against each other (lazy.test.ts).
 */
export const COMMAND_WORDS: readonly string[] = [
  'vm',
  'run',
  'exec',
  'jobs',
  'job',
  'logs',
  'pool',
  'volume',
  'snapshot',
  'info',
  'hosts',
  'events',
  'top',
  'console',
  'cp',
  'port-forward',
  'image',
  'help',
];
