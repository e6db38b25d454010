/** The `mvirt` program (built to dist/mvirt.js, started by bin/mvirt.js). */
import { processIo } from './io.js';
import { runCli } from './run.js';

// Whatever happens, never leave the user's terminal in raw mode.
process.on('exit', () => {
  if (process.stdin.isTTY) process.stdin.setRawMode(false);
});

// A reader that goes away (`mvirt events -f | grep -m1 …`) is a normal end, not a crash.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

const code = await runCli(process.argv.slice(2), processIo());
// Exit once stdout has drained so piped output is never cut short, without
// waiting for stdin or sockets a command left behind.
process.stdout.write('', () => process.exit(code));
