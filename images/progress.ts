/**
 * Step-by-step progress on stderr: `[n/N] name ... 1.2s`. Plain lines (no
 * cursor tricks) so that logs and CI output read the same as a terminal.
 */
export interface Progress {
  step<T>(name: string, fn: () => Promise<T>): Promise<T>;
  info(msg: string): void;
  warn(msg: string): void;
  readonly warnings: readonly string[];
}

export function createProgress(
  total: number,
  write: (s: string) => void = (s) => process.stderr.write(s),
): Progress {
  let n = 0;
  const warnings: string[] = [];
  return {
    warnings,
    async step(name, fn) {
      n += 1;
      const t0 = performance.now();
      write(`[${n}/${total}] ${name} ...\n`);
      try {
        const r = await fn();
        write(`[${n}/${total}] ${name} done in ${((performance.now() - t0) / 1000).toFixed(1)}s\n`);
        return r;
      } catch (err) {
        write(
          `[${n}/${total}] ${name} FAILED after ${((performance.now() - t0) / 1000).toFixed(1)}s\n`,
        );
        throw err;
      }
    },
    info(msg) {
      write(`      ${msg}\n`);
    },
    warn(msg) {
      warnings.push(msg);
      write(`      warning: ${msg}\n`);
    },
  };
}
