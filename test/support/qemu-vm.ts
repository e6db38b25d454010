/**
 * Helpers for QEMU integration tests: launch test guests with the backend and
 * guarantee that no QEMU outlives the test (every pid is SIGKILLed in an
 * after hook, whether the test passed or not), and await markers on streams
 * instead of sleeping.
 */
import path from 'node:path';
import type { Duplex } from 'node:stream';
import {
  createQemuBackend,
  type QemuBackend,
  type QemuBackendOptions,
} from '../../host/hypervisors/qemu/backend.js';
import { readProcStat } from '../../host/hypervisors/proc.js';
import type { LaunchSpec, RunningVm } from '../../host/hypervisors/types.js';
import { pino, type Logger } from 'pino';
import type { TestGuest } from './qemu-guest.js';

/** The hypervisor interface takes plain pino loggers (the daemon passes children). */
export const quietLog = (): Logger => pino({ level: 'silent' });

/** Every QEMU a test launched; killLaunched() ends them. */
const launched = new Set<RunningVm>();

/** SIGKILLs every launched QEMU and waits until each has ended (its console log written). */
export async function killLaunched(): Promise<void> {
  const all = [...launched];
  launched.clear();
  for (const vm of all) vm.signal('SIGKILL');
  await Promise.all(all.map((vm) => vm.exited));
}

export function testBackend(opts: QemuBackendOptions = {}): QemuBackend {
  return createQemuBackend({ accel: 'tcg', ...opts }, quietLog());
}

let seq = 0;

export function testSpec(guest: TestGuest, over: Partial<LaunchSpec> = {}): LaunchSpec {
  const vmId = `t${process.pid}-${seq++}`;
  return {
    vmId,
    vcpus: 1,
    memoryMiB: 256,
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: 'console=ttyS0 panic=-1 quiet',
    disks: [],
    dir: path.join(guest.workDir, vmId),
    channel: 'virtio-serial',
    agentArgs: {},
    network: { mode: 'none' },
    consoleLogBytes: 64 * 1024,
    ...over,
  };
}

export async function launchTracked(backend: QemuBackend, spec: LaunchSpec): Promise<RunningVm> {
  const vm = await backend.launch(spec, quietLog());
  launched.add(vm);
  return vm;
}

/** Still the same live process? */
export const stillRunning = (pid: number, startTime: number): boolean => {
  const st = readProcStat(pid);
  return st !== null && st.state !== 'Z' && st.startTime === startTime;
};

/**
 * A reader that accumulates a stream's text so tests can await markers
 * (`waitFor(marker, n)` resolves once the marker has been seen n times).
 */
export function streamReader(stream: Duplex) {
  let text = '';
  const waiters = new Set<() => void>();
  stream.on('data', (chunk: Buffer) => {
    text += chunk.toString('utf8');
    for (const w of [...waiters]) w();
  });
  stream.on('error', () => undefined);
  const count = (marker: string) => text.split(marker).length - 1;
  return {
    get text() {
      return text;
    },
    count,
    waitFor(marker: string, times = 1, timeoutMs = 120_000): Promise<void> {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (count(marker) >= times) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(
            new Error(`timed out waiting for ${marker} x${times}; got:\n${text.slice(-2000)}`),
          );
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

/** Resolve with the value, or reject after ms (to bound awaits on promises like `exited`). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
