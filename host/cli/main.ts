/** The `mvirt` program (built to dist/cli.cjs, started by bin/mvirt.js through dist/mvirt.cjs, start.ts). */
import { processIo, stdinOpened } from './io.js';
import { runCli } from './run.js';

// Whatever happens, never leave the user's terminal in raw mode (only a
// command that opened stdin can have set it: io.ts).
process.on('exit', () => {
  if (stdinOpened() && process.stdin.isTTY) process.stdin.setRawMode(false);
});

// A reader that goes away (`mvirt events -f | grep -m1 …`) is a normal end, not a crash.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

// Not a top-level await: the bundle is a CommonJS script (code-cache.ts).
void runCli(process.argv.slice(2), processIo()).then((code) => {
  // Exit once stdout has drained so piped output is never cut short, without
  // waiting for stdin or sockets a command left behind.
  process.stdout.write('', () => process.exit(code));
});
