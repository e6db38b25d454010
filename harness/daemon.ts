/**
 * The daemon harness for tests and benches: the real mvirtd, either
 *  - in-process (startTestDaemon): its VMs fake (fake-vms.ts, optionally
 *    running the real agent core) or real QEMU (no `hypervisors` given), or
 *  - a separate process (spawnDaemon): from source through tsx, or the built
 *    bundle (bin/mvirtd.js → dist/mvirtd.js) as shipped, driving real QEMU; for tests that
 *    kill it with SIGKILL, measure it, or run it in a network namespace.
 * Both get the same base arguments (a temp data dir, any free port, no host
 * networking); controllers reach either through connect.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startDaemon } from '../host/daemon/daemon.js';
import type { Daemon } from '../host/daemon/types.js';
import { parseOptions } from '../host/daemon/options.js';
import type { Hypervisor } from '../host/hypervisors/types.js';
import { createLogger, silentLogger, type MvirtLogger } from '../host/log.js';
import { decode, sniffEncoding, type Encoding } from '../protocol/codec.js';
import { ensureBuilt } from './build.js';
import type { DaemonAddress } from './connect.js';
import { makeTempDir, REPO } from './paths.js';
import { adminLogin, writeAdminUsers } from './test-admin.js';
import { fakeElfKernel, gzipBzImage } from './kernels.js';

export const HOST_ID = 'test-host';

/**
 * Host networking off: tests run as root, and a daemon left to its defaults
 * would create the mvirt0 bridge on the machine's own interfaces. The base
 * arguments put these first, so a caller's own --bridge/--network win (the
 * last of a repeated option counts); tests of networking pass them together
 * with a network namespace of their own.
 */
export const NO_HOST_NETWORK = ['--bridge', 'off', '--network', 'none'] as const;

/**
 * What every test daemon starts with, before the caller's own arguments: any
 * free port for MQTT and --http (daemons run side by side), the test host id,
 * no host networking.
 */
function baseArgs(): string[] {
  return [
    '--listen',
    '127.0.0.1:0',
    '--host-id',
    HOST_ID,
    '--http',
    '127.0.0.1:0',
    ...NO_HOST_NETWORK,
  ];
}

/**
 * A placeholder image (a valid manifest, empty initrd and root disk, and a
 * small bzImage-shaped kernel an ELF-only backend can derive its vmlinux
 * from): enough for the fake backends.
 */
export async function writeFakeImage(imagesDir: string, name = 'default'): Promise<void> {
  const dir = path.join(imagesDir, name);
  await mkdir(dir, { recursive: true });
  for (const f of ['initrd.img', 'rootfs.squashfs']) await writeFile(path.join(dir, f), '');
  await writeFile(path.join(dir, 'vmlinuz'), gzipBzImage(fakeElfKernel()));
  const sha = '0'.repeat(64);
  const manifest = {
    schema: 1,
    name,
    key: sha,
    kernel: { file: 'vmlinuz', release: 'fake', source: 'debian' },
    initrd: { file: 'initrd.img', compression: 'lz4' },
    disk: {
      file: 'rootfs.squashfs',
      format: 'squashfs',
      compression: 'zstd',
      readOnly: true,
      bus: 'virtio-blk',
    },
    cmdline: 'console=ttyS0',
    boot: {
      machine: 'pc',
      transport: 'virtio-pci',
      serialConsole: 'ttyS0',
      agentPort: 'mvirt.agent',
      minMemoryMiB: 64,
      testedAccel: ['tcg'],
    },
    inputs: [],
    outputs: [],
    sizes: { kernelPlusInitrd: 0, total: 0 },
    modules: [],
    build: {
      at: new Date(0).toISOString(),
      seconds: 0,
      fromCache: false,
      sourceDateEpoch: 0,
      builderVersion: 1,
    },
    warnings: [],
  };
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
}

export function testLogger(): MvirtLogger {
  return process.env.MVIRT_TEST_LOG
    ? createLogger({ level: process.env.MVIRT_TEST_LOG })
    : silentLogger();
}

export interface TestDaemon extends DaemonAddress {
  daemon: Daemon;
  dataDir: string;
  /** Stop the daemon (VMs keep running unless stopVms). */
  stop(): Promise<void>;
}

/**
 * mvirtd in this process; its data dir gets a placeholder default image,
 * enough for fake VMs (`hypervisors`: fake-vms.ts). Without `hypervisors` it
 * drives the real backends and needs a real image (`--images-dir` in args).
 */
export async function startTestDaemon(opts: {
  dataDir?: string;
  hypervisors?: Hypervisor[];
  args?: string[];
  log?: MvirtLogger;
  /** DaemonOverrides.rollupFlushMs */
  rollupFlushMs?: number;
}): Promise<TestDaemon> {
  const dataDir = opts.dataDir ?? (await makeTempDir());
  await writeFakeImage(path.join(dataDir, 'images'));
  const options = parseOptions([
    '--data-dir',
    dataDir,
    ...baseArgs(),
    ...loginArgs(opts.args ?? [], dataDir),
    ...(opts.args ?? []),
  ]);
  const daemon = await startDaemon(options, opts.log ?? testLogger(), {
    ...(opts.hypervisors ? { hypervisors: opts.hypervisors } : {}),
    ...(opts.rollupFlushMs !== undefined ? { rollupFlushMs: opts.rollupFlushMs } : {}),
  });
  return {
    daemon,
    dataDir,
    // The unix socket (anonymous, as the local user); TCP needs the test admin's login.
    url: daemon.broker.addresses.unix
      ? `unix://${daemon.broker.addresses.unix}`
      : `mqtt://${daemon.broker.addresses.tcp!}`,
    root: daemon.topics.root,
    stop: () => daemon.close(),
  };
}

export interface DaemonProcess extends DaemonAddress {
  child: ChildProcess;
  /** The test admin of the users file spawnDaemon wrote (null when the caller gave --users). */
  admin: { username: string; password: string } | null;
  /** `http://host:port` of --http (null when off); it asks for `admin`'s login. */
  httpUrl: string | null;
  /** The unix socket controllers may use (always there). */
  socket: string | null;
  /** `mqtt://host:port` of --listen (null when off or inside a network namespace); it asks for a login. */
  tcpUrl: string | null;
  pid: number;
  /** stderr lines so far (JSON logs). */
  logs: string[];
  /** Resolves with the exit once the process is gone. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * TCP, WebSocket and HTTP controllers always log in (loopback is not an
 * identity): every test daemon knows the test admin, unless the caller brings
 * its own --users; anonymous controllers stay allowed on the unix socket.
 */
function loginArgs(args: readonly string[], dir: string): string[] {
  if (args.includes('--users')) return [];
  mkdirSync(dir, { recursive: true });
  return ['--users', writeAdminUsers(dir), '--allow-anonymous'];
}

/**
 * mvirtd as a separate process; resolves on its 'mvirtd ready' log line (or
 * rejects with its stderr). `url` is its unix socket (anonymous there, as the
 * local user), else its TCP listener; `tcpUrl` is the TCP listener.
 */
export async function spawnDaemon(
  args: string[],
  opts: {
    /** 'dist': the built bundle (built first when missing); default: the source through tsx. */
    bundle?: 'dist';
    readyTimeoutMs?: number;
    /** Run inside this network namespace (`ip netns exec`); controllers then use the unix socket. */
    netns?: string;
  } = {},
): Promise<DaemonProcess> {
  const di = args.indexOf('--data-dir');
  const usersDir =
    di >= 0 && args[di + 1] ? args[di + 1]! : mkdtempSync(path.join(os.tmpdir(), 'mvirt-users-'));
  const all = [...baseArgs(), ...loginArgs(args, usersDir), ...args];
  if (opts.bundle === 'dist') ensureBuilt();
  const node =
    opts.bundle === 'dist'
      ? // The shipped entry point: run as the main module itself, dist/mvirtd.js
        // also runs host/dashboard/build.ts's command-line entry (argv[1] is
        // the bundle) and dies on "Could not resolve dist/main.ts".
        [path.join(REPO, 'bin/mvirtd.js'), ...all]
      : ['--import', 'tsx', path.join(REPO, 'host/daemon/main.ts'), ...all];
  // `ip netns exec` execs node in place: the pid is the daemon's.
  const [file, argv] = opts.netns
    ? ['ip', ['netns', 'exec', opts.netns, process.execPath, ...node]]
    : [process.execPath, node];
  // Not a node:test child itself, whatever runs this test.
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(file, argv, { cwd: REPO, env, stdio: ['ignore', 'ignore', 'pipe'] });
  const logs: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const timeoutMs = opts.readyTimeoutMs ?? 60_000;
  let clearReadyTimer = (): void => undefined;
  const ready = await new Promise<{
    url: string;
    root: string;
    httpUrl: string | null;
    socket: string | null;
    tcpUrl: string | null;
  }>((resolve, reject) => {
    let buf = '';
    child.stderr!.on('data', (b: Buffer) => {
      buf += b.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        logs.push(line);
        let j: {
          msg?: string;
          root?: string;
          addresses?: { tcp?: string | null; unix?: string | null };
          http?: string | null;
        };
        try {
          j = JSON.parse(line) as typeof j;
        } catch {
          continue; // not JSON
        }
        if (j.msg !== 'mvirtd ready') continue;
        const unix = j.addresses?.unix ?? null;
        const tcp = opts.netns ? null : (j.addresses?.tcp ?? null);
        // Controllers use the unix socket (anonymous there, as the local user).
        const url = unix ? `unix://${unix}` : tcp ? `mqtt://${tcp}` : null;
        if (!url || !j.root) return reject(new Error(`mvirtd ready without an address: ${line}`));
        resolve({
          url,
          root: j.root,
          httpUrl: j.http ?? null,
          socket: unix,
          tcpUrl: tcp ? `mqtt://${tcp}` : null,
        });
      }
    });
    void exited.then(({ code }) =>
      reject(new Error(`mvirtd exited (${code}) before it was ready:\n${logs.join('\n')}`)),
    );
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`mvirtd not ready within ${timeoutMs} ms`));
    }, timeoutMs);
    t.unref();
    // Cleared once ready: left armed, it SIGKILLed every daemon 60 s after its
    // start, which looked like a daemon that wedged on its second boot.
    clearReadyTimer = () => clearTimeout(t);
  });
  clearReadyTimer();
  const admin = args.includes('--users') ? null : adminLogin();
  return { child, ...ready, admin, pid: child.pid!, logs, exited };
}

/** Stop a spawned daemon with SIGTERM and wait for it to be gone. */
export async function stopProcess(d: DaemonProcess): Promise<void> {
  if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill('SIGTERM');
  await d.exited;
}

/** An RPC request as the daemon received it. */
export interface SeenRequest {
  method: string;
  params: unknown;
  encoding: Encoding;
}

export interface RequestSpy {
  /** Every request since the spy started, in arrival order. */
  readonly requests: SeenRequest[];
  /** The first `method` request at index `from` (default: the next one) or later. */
  next(method: string, from?: number): Promise<SeenRequest>;
  stop(): Promise<void>;
}

/**
 * Watch the RPC requests an in-process daemon receives (through its own bus,
 * as its API does): what a controller such as the CLI actually sent.
 */
export async function spyRequests(d: TestDaemon): Promise<RequestSpy> {
  const requests: SeenRequest[] = [];
  const waiters = new Set<() => void>();
  const prefix = `${d.root}/rpc/`;
  const unsubscribe = await d.daemon.broker.subscribe(`${prefix}+`, (topic, payload) => {
    const encoding = sniffEncoding(payload);
    let params: unknown;
    try {
      params = (decode(payload, encoding) as { params?: unknown }).params;
    } catch {
      params = undefined; // the API answers malformed requests; the spy records the method
    }
    requests.push({ method: topic.slice(prefix.length), params, encoding });
    for (const w of [...waiters]) w();
  });
  return {
    requests,
    next: (method, from = requests.length) =>
      new Promise<SeenRequest>((resolve) => {
        const check = (): void => {
          const r = requests.slice(from).find((q) => q.method === method);
          if (!r) return;
          waiters.delete(check);
          resolve(r);
        };
        waiters.add(check);
        check();
      }),
    stop: unsubscribe,
  };
}
