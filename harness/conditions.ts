/**
 * Waiting for a condition over a stream of messages: `until(fn)` resolves
 * with fn()'s value once it is not undefined, checked now and after every
 * `notify()` (call it for each message), or rejects after the timeout. The
 * recorder (client.ts) and the flood state watch (flood.ts) both use it.
 */
export function createConditions() {
  const checks = new Set<() => void>();
  return {
    notify(): void {
      for (const c of [...checks]) c();
    },
    until<T>(fn: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const v = fn();
          if (v === undefined) return;
          checks.delete(check);
          clearTimeout(timer);
          resolve(v);
        };
        const timer = setTimeout(() => {
          checks.delete(check);
          reject(new Error(`${what}: not seen within ${timeoutMs} ms`));
        }, timeoutMs);
        checks.add(check);
        check();
      });
    },
  };
}
