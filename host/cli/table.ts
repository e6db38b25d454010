/**
 * The command table: which module holds the commands that start with a word.
 * A module is imported when one of its commands runs or its help is asked
 * for, never at start: `mvirt vm ls` loads vm.ts (and snapshot.ts, which also
 * holds `vm snapshot` and `vm suspend`), not the other nine. esbuild puts each
 * in a chunk of its own (scripts/build.mjs).
 *
 * Command modules stay light: what needs zod, MQTT.js or cbor-x (the client,
 * the protocol's schemas) is imported inside a command's run, so even
 * `mvirt --help`, which loads them all, loads none of those
 * (test/unit/cli/lazy.test.ts checks the bundle).
 */
import type { Command } from './command.js';

interface CommandModule {
  /** The first words of its commands (`vm` for `vm ls`, `run` for `run`). */
  words: readonly string[];
  load(): Promise<readonly Command[]>;
}

/** In the order `mvirt --help` lists them. */
const MODULES: readonly CommandModule[] = [
  { words: ['vm'], load: async () => (await import('./vm.js')).vmCommands },
  { words: ['vm'], load: async () => (await import('./snapshot.js')).vmSaveCommands },
  {
    words: ['run', 'jobs', 'job', 'logs'],
    load: async () => (await import('./jobs.js')).jobCommands,
  },
  { words: ['exec'], load: async () => (await import('./exec.js')).execCommands },
  { words: ['pool'], load: async () => (await import('./pool.js')).poolCommands },
  { words: ['volume'], load: async () => (await import('./volume.js')).volumeCommands },
  { words: ['image'], load: async () => (await import('./image.js')).imageCommands },
  { words: ['snapshot'], load: async () => (await import('./snapshot.js')).snapshotCommands },
  { words: ['info'], load: async () => (await import('./info.js')).infoCommands },
  { words: ['hosts'], load: async () => (await import('./hosts.js')).hostsCommands },
  { words: ['events'], load: async () => (await import('./events.js')).eventsCommands },
  { words: ['top'], load: async () => (await import('./top.js')).topCommands },
  { words: ['console'], load: async () => (await import('./console.js')).consoleCommands },
  { words: ['cp'], load: async () => (await import('./cp.js')).cpCommands },
  {
    words: ['port-forward'],
    load: async () => (await import('./port-forward.js')).portForwardCommands,
  },
];

/** Every first word a command has. */
export const FIRST_WORDS: ReadonlySet<string> = new Set(MODULES.flatMap((m) => m.words));

async function load(modules: readonly CommandModule[]): Promise<Command[]> {
  return (await Promise.all(modules.map((m) => m.load()))).flat();
}

/** The commands whose first word is `word` (none for a word no command has). */
export const commandsFor = (word: string): Promise<Command[]> =>
  load(MODULES.filter((m) => m.words.includes(word))).then((cs) =>
    cs.filter((c) => c.name.split(' ')[0] === word),
  );

/** Every command, in help order (loads every command module). */
export const allCommands = (): Promise<Command[]> => load(MODULES);
