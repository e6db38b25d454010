/**
 * mvirtd as a separate process driving real QEMU VMs, for integration tests:
 * a daemon per data dir with generous TCG timeouts, an RPC client, the daemon
 * logs printed when a test fails, and cleanup that leaves no QEMU behind
 * (SIGKILL to every QEMU whose command line points into the test's data dir).
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { after } from 'node:test';
import { rpcClient, type RpcClient } from '../../harness/client.js';
import { HOST_ID, spawnDaemon, stopProcess, type DaemonProcess } from '../../harness/daemon.js';
import { makeTempDir, removeDir, REPO } from '../../harness/paths.js';

export { result as ok } from '../../harness/client.js';

export const IMAGES = process.env.MVIRT_IMAGES_DIR ?? path.join(REPO, 'test-output/data/images');
export const ROOT = `mvirt/${HOST_ID}`;
/** A TCG boot on a busy 2-core machine: generous on purpose (tests only). */
export const BOOT_MS = 180_000;

/** `skip` option for tests that need the default image (npm test builds it). */
export const skipNoImage: string | false = existsSync(path.join(IMAGES, 'default', 'manifest.json'))
  ? false
  : `no default image in ${IMAGES} (run npm test, or set MVIRT_IMAGES_DIR)`;

const pids = new Set<number>();
const daemons: DaemonProcess[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL'); // no orphan QEMU, whatever happened
    } catch {
      /* gone */
    }
  }
});

/** Remember a QEMU pid: killed at the end whatever happened. */
export const trackPid = (pid: number | undefined): void => {
  if (pid !== undefined) pids.add(pid);
};

export const onCleanup = (fn: () => Promise<void> | void): void => {
  cleanups.push(fn);
};

/** On failure, show what the daemons said: a TCG boot that goes wrong in CI must be explainable. */
export async function explained<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    for (const d of daemons)
      console.error(`--- mvirtd ${d.pid} log tail ---\n${d.logs.slice(-150).join('\n')}`);
    throw err;
  }
}

/** SIGKILL every QEMU whose command line points into dataDir: no orphans, even after a failure. */
export function killQemusOf(dataDir: string): void {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`${dataDir}/vm/`)) {
        process.kill(Number(pid), 'SIGKILL');
      }
    } catch {
      /* gone meanwhile */
    }
  }
}

export async function tempDataDir(prefix: string): Promise<string> {
  const dir = await makeTempDir(prefix);
  cleanups.push(() => removeDir(dir));
  return dir;
}

/** A daemon on `dataDir` with the test images; stopped (with its VMs) at the end. */
export async function qemuDaemon(
  dataDir: string,
  extra: string[] = [],
  opts: {
    /** Run the daemon in this network namespace (controllers use its unix socket). */
    netns?: string;
    /**
     * Leave its VMs running when it exits, SIGTERM included (mvirtd's default):
     * for tests that restart the daemon under running VMs. The cleanup still
     * kills every QEMU of the data dir.
     */
    leaveVms?: boolean;
  } = {},
): Promise<{ d: DaemonProcess; c: RpcClient }> {
  const d = await spawnDaemon(
    [
      '--data-dir',
      dataDir,
      '--images-dir',
      IMAGES,
      '--listen',
      '127.0.0.1:0',
      '--host-id',
      HOST_ID,
      '--boot-timeout-ms',
      String(BOOT_MS),
      // The cleanup below stops the daemon with SIGTERM; its VMs must go with it.
      ...(opts.leaveVms ? [] : ['--stop-vms-on-exit']),
      '--log-level',
      'debug',
      ...extra,
    ],
    { netns: opts.netns },
  );
  daemons.push(d);
  const c = await rpcClient(d);
  cleanups.push(async () => {
    c.mqtt.end(true);
    await stopProcess(d);
    killQemusOf(dataDir); // whatever state the test left its VMs in
    // Their RAM files (mvirtd --ram-dir's default for this data dir): a QEMU
    // killed here, with no daemon left to release it, would keep its guest
    // RAM on /dev/shm until the next mvirtd on this data dir.
    await rm(defaultRamDir(dataDir), { recursive: true, force: true });
  });
  return { d, c };
}

/** A predicate for VM/job event and state payloads. */
export const field =
  (key: string, want: unknown) =>
  (_t: string, p: Buffer): boolean =>
    p.length > 0 && (JSON.parse(p.toString()) as Record<string, unknown>)[key] === want;

/** mvirtd's default --ram-dir for a data dir (host/daemon/options.ts ramDirOf). */
export const defaultRamDir = (dataDir: string): string =>
  `/dev/shm/mvirt-${createHash('sha256').update(path.resolve(dataDir)).digest('hex').slice(0, 12)}`;
