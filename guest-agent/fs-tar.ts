/**
 * A directory goes as a tar archive (busybox tar in the guest): packed by
 * `tar -c` read as the host asks (the pipe holds tar back), unpacked by
 * `tar -x` from a complete, checked partial file (fs-transfers.ts).
 */
import type { Readable } from 'node:stream';
import type { Platform } from './platform/types.js';

/** Take bytes from a stream as they are asked for (the pipe holds the writer back meanwhile). */
export interface PullReader {
  read(n: number): Promise<Buffer>;
  /** Resolves with the writer's exit: null when it succeeded, else why not. */
  done: Promise<string | null>;
  kill(): void;
}

export function createTar(platform: Platform) {
  type Proc = ReturnType<Platform['spawn']>;

  /** Run tar to its end: null when it succeeded, else why not (its stderr's tail). */
  function run(argv: string[]): Promise<string | null> {
    const proc = platform.spawn({ argv, env: platform.jobEnv() });
    const done = exitOf(proc);
    // A Proc's streams are there from its 'spawn' on (the launcher's are opened then).
    proc.on('spawn', () => {
      proc.stdin?.end();
      proc.stdout?.resume();
    });
    return done;
  }

  function exitOf(proc: Proc): Promise<string | null> {
    let text = '';
    proc.on('spawn', () =>
      proc.stderr?.setEncoding('utf8').on('data', (d: string) => (text = (text + d).slice(-1024))),
    );
    return new Promise((resolve) => {
      proc.on('error', (err) => resolve(err.message));
      proc.on('exit', (code, signal) =>
        resolve(code === 0 ? null : text.trim() || `tar: exit ${code ?? signal}`),
      );
    });
  }

  /** `dir` packed as tar, read as asked. */
  function pack(dir: string): PullReader {
    const proc = platform.spawn({
      argv: ['tar', '-c', '-f', '-', '-C', dir, '.'],
      env: platform.jobEnv(),
    });
    const done = exitOf(proc);
    let ended = false;
    let killed = false;
    const kill = () => {
      killed = true;
      if (proc.pid) platform.killGroup(proc.pid, 'SIGKILL');
    };
    // Its stdout once spawned; null: it never was (`done` says why).
    const spawned = new Promise<Readable | null>((resolve) => {
      proc.on('error', () => resolve(null));
      proc.on('spawn', () => {
        proc.stdin?.end();
        const out = proc.stdout!;
        out.on('end', () => (ended = true));
        out.on('error', () => (ended = true));
        if (killed) kill();
        resolve(out);
      });
    });
    async function read(n: number): Promise<Buffer> {
      const out = await spawned;
      const parts: Buffer[] = [];
      let have = 0;
      while (out && have < n) {
        const b = out.read(Math.min(n - have, out.readableLength || n - have)) as Buffer | null;
        if (b) {
          parts.push(b);
          have += b.length;
          continue;
        }
        if (ended || out.readableEnded) break;
        await new Promise<void>((resolve) => {
          const go = () => {
            out.off('readable', go);
            out.off('end', go);
            out.off('close', go);
            resolve();
          };
          out.on('readable', go);
          out.on('end', go);
          out.on('close', go);
        });
      }
      return Buffer.concat(parts);
    }
    return { read, done, kill };
  }

  /** Unpack the archive `file` into the directory `dir`: null when it succeeded, else why not. */
  const unpack = (file: string, dir: string) => run(['tar', '-x', '-f', file, '-C', dir]);

  return { pack, unpack };
}

export type Tar = ReturnType<typeof createTar>;
