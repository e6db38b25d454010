/**
 * A VM's serial console output on its way to controllers, batched (issue 12).
 * A guest writing to its console byte by byte became about 18,000 MQTT
 * messages of ~11 bytes a second and cost mvirtd most of a core; here what
 * arrives within `maxDelayMs` goes out as one message (or sooner, once
 * `maxBytes` are waiting), and only while someone subscribes: nothing is
 * kept or published for nobody. The console log file (written by the
 * hypervisor backend) keeps everything either way.
 */
export interface ConsoleBatch {
  /** Publish once this many bytes wait … */
  maxBytes: number;
  /** … or this long after the first byte of a batch arrived. */
  maxDelayMs: number;
}

/**
 * 50 ms keeps an interactive console feeling immediate (a keystroke's echo
 * shows within a frame or three) and caps a flooding guest at 20 messages a
 * second; 64 KiB is what one socket read brings at most.
 */
export const DEFAULT_CONSOLE_BATCH: ConsoleBatch = { maxBytes: 64 * 1024, maxDelayMs: 50 };

export interface ConsoleOut {
  /** Bytes the console produced. */
  push(chunk: Buffer): void;
  /** Publish what waits now (the console closed). */
  flush(): void;
  /** Bytes not published because nobody listened. */
  readonly unheard: number;
}

export function createConsoleOut(deps: {
  publish: (payload: Buffer) => void;
  listening: () => boolean;
  batch?: ConsoleBatch;
}): ConsoleOut {
  const { maxBytes, maxDelayMs } = deps.batch ?? DEFAULT_CONSOLE_BATCH;
  let parts: Buffer[] = [];
  let size = 0;
  let timer: NodeJS.Timeout | null = null;
  let unheard = 0;

  function flush(): void {
    if (timer) clearTimeout(timer);
    timer = null;
    if (size === 0) return;
    const payload = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
    parts = [];
    size = 0;
    deps.publish(payload);
  }

  return {
    push(chunk) {
      if (!deps.listening()) {
        unheard += chunk.length;
        return;
      }
      parts.push(chunk);
      size += chunk.length;
      if (size >= maxBytes) flush();
      else timer ??= setTimeout(flush, maxDelayMs);
    },
    flush,
    get unheard() {
      return unheard;
    },
  };
}
