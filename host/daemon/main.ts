/**
 * `mvirtd`: parse options, start the daemon, stop it on SIGINT/SIGTERM.
 * Logs go to stderr as JSON lines (pino).
 */
import { MvirtError } from '../../protocol/errors.js';
import { createLogger } from '../log.js';
import { startDaemon } from './daemon.js';
import { parseOptions, USAGE, type DaemonOptions } from './options.js';
import { VERSION } from './version.js';

async function main(): Promise<void> {
  let opts: DaemonOptions;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    const msg = err instanceof MvirtError ? `${err.code}: ${err.message}` : String(err);
    process.stderr.write(`mvirtd: ${msg}\n`);
    process.exit(2);
  }
  if (opts.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (opts.version) {
    process.stdout.write(`${VERSION}\n`);
    return;
  }
  const log = createLogger({ level: opts.logLevel, name: 'mvirtd' });
  process.on('uncaughtException', (err) => {
    // VMs outlive us and the next start re-attaches them; exiting is safe.
    log.fatal({ err }, 'uncaught exception; exiting');
    process.exit(1);
  });
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));

  let daemon: Awaited<ReturnType<typeof startDaemon>>;
  try {
    daemon = await startDaemon(opts, log);
  } catch (err) {
    const code = err instanceof MvirtError ? err.code : 'INTERNAL';
    log.fatal({ err, code }, 'mvirtd could not start');
    process.exit(err instanceof MvirtError && err.code === 'CONFIG_INVALID' ? 2 : 1);
  }

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (++signals > 1) {
      log.warn({ signal: sig }, 'second signal: exiting now');
      process.exit(1);
    }
    log.info(
      { signal: sig, stopVms: opts.stopVmsOnExit },
      opts.stopVmsOnExit
        ? 'shutting down; stopping all VMs (--stop-vms-on-exit)'
        : 'shutting down; VMs keep running and are re-attached at the next start',
    );
    daemon.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'unclean shutdown');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // SIGHUP: renewed TLS certificates, without a restart (open connections keep theirs).
  process.on('SIGHUP', () => daemon.reloadTls());
}

await main();
