/**
 * pino with one extra level, `audit`, for every state-changing operation
 * (DESIGN: log-level guidelines). Components get child loggers injected.
 */
import pino, { type Logger, type DestinationStream } from 'pino';

export const LEVELS = { audit: 35 } as const;

export type MvirtLogger = Logger<'audit'>;

export function createLogger(
  opts: { level?: string; name?: string; destination?: DestinationStream } = {},
): MvirtLogger {
  return pino(
    {
      name: opts.name ?? 'mvirtd',
      level: opts.level ?? process.env.MVIRT_LOG_LEVEL ?? 'info',
      customLevels: LEVELS,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination ?? pino.destination(2),
  );
}

/** A silent logger for tests that do not look at logs. */
export const silentLogger = (): MvirtLogger => pino({ level: 'silent', customLevels: LEVELS });
