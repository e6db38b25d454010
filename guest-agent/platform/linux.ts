/** The real Platform: Linux, as seen from inside the µOS (busybox init is PID 1). */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, statSync } from 'node:fs';
import {
  chmod,
  mkdir,
  open,
  readFile,
  readdir,
  rename,
  rm,
  statfs,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { connect } from 'node:net';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import { FW_CFG_IDENTITY } from '../../protocol/agent.js';
import {
  UnsupportedChannelError,
  type ChannelSpec,
  type NicConfig,
  type Platform,
  type SpawnRequest,
  type PowerAction,
} from './types.js';
import { createClockSetter } from './clock.js';
import { createHelperShell } from './helper-shell.js';
import { findVirtioPort, openPollableDevice } from './virtio.js';
import { openRelay, VSOCK_HELPER } from './vsock.js';
import { createJobGroups } from './cgroups.js';
import { inImage, readImageRuntime } from './image.js';
import type { ImageRuntime } from '../../protocol/image.js';
import { PTY_HELPER, TTY_SIZE_DIR } from '../tty.js';
import { createNodeFs } from './files.js';
import { LAUNCH_HELPER, launcherAt } from './launcher.js';
import type { SeedIo } from '../cloud-init.js';

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const TCP_CONNECT_TIMEOUT_MS = 10_000;
/** A port-forward stream's connection to the guest's service (guest-agent/ports.ts). */
const PORT_CONNECT_TIMEOUT_MS = 60_000;
/** If init has not taken the machine down by then, force it. */
const POWER_FALLBACK_MS = 10_000;
/**
 * The identity's fw_cfg file. The µOS init loads qemu_fw_cfg (the image
 * recipe's modules); the modules stay in the initramfs, so the agent cannot
 * load it itself: without it (or without the file) there is no identity.
 */
export const IDENTITY_PATH = `/sys/firmware/qemu_fw_cfg/by_name/${FW_CFG_IDENTITY}/raw`;
/** The one NIC mvirtd gives a VM (the µOS's net-up configures the same). */
const NIC = 'eth0';

/** Run a (busybox) command; rejects with its exit status and stderr when it fails. */
function run(argv: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const [file, ...args] = argv as [string, ...string[]];
    const child = spawn(file, args, {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { PATH: DEFAULT_PATH },
    });
    let stderr = '';
    child.stderr
      .setEncoding('utf8')
      .on('data', (d: string) => (stderr = (stderr + d).slice(0, 1024)));
    child.once('error', (err) => reject(new Error(`${argv.join(' ')}: ${err.message}`)));
    child.once('exit', (code, signal) => {
      if (code === 0) return resolve();
      const why = stderr.trim().slice(0, 512) || `exit ${code ?? signal}`;
      reject(new Error(`${argv.join(' ')}: ${why}`));
    });
  });
}

/**
 * One `sh` for all the `ip` steps: each spawn forks the agent's ~80 MB Node
 * process, which under TCG cost ~80 ms apiece (six of them were half of a
 * fork's restore → ready); busybox sh forks itself cheaply. The values are
 * positional parameters, never spliced into the script.
 */
const NIC_SCRIPT = [
  // virtio-net refuses a new MAC while the link is up (EBUSY) unless the
  // device offers live changes: take it down. Down also drops its routes.
  'ip link set dev "$1" down',
  'ip link set dev "$1" address "$2"',
  'ip link set dev "$1" up',
  'ip addr flush dev "$1"',
  'ip addr add "$3" dev "$1"',
  'if [ -n "$4" ]; then ip route replace default via "$4" dev "$1"; fi',
].join(' && ');

async function configureNic(net: NicConfig): Promise<void> {
  await run(['sh', '-c', NIC_SCRIPT, 'nic', NIC, net.mac, net.ip, net.gw ?? '']);
  // /etc/resolv.conf links to /run/resolv.conf in the µOS; a read-only one is left alone.
  if (net.dns)
    await writeFile('/etc/resolv.conf', `nameserver ${net.dns}\n`).catch(() => undefined);
}

function uptimeS(): number {
  return Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
}

function openTcp(
  host: string,
  port: number,
  allowHalfOpen = false,
  timeoutMs = TCP_CONNECT_TIMEOUT_MS,
): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port, noDelay: true, keepAlive: true, allowHalfOpen });
    const timer = setTimeout(
      () => sock.destroy(new Error(`connect ${host}:${port} timed out`)),
      timeoutMs,
    );
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeListener('error', reject);
      resolve(sock);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * A job of an imported image: image-exec enters its root, its cwd there and
 * its user; a command it cannot run exits 127/126 saying why (as a shell
 * does), since the lookup happens inside the root. A limited job enters its
 * group first, as below.
 */
function imageRequest(image: ImageRuntime, req: SpawnRequest, ptyHelper: string): SpawnRequest {
  // A tty job (`mvirt-pty … -- CMD`): the pty helper is the µOS's and stays
  // outside; only its command enters the image.
  const sep = req.argv[0] === ptyHelper ? req.argv.indexOf('--') : -1;
  const argv =
    sep > 0
      ? [...req.argv.slice(0, sep + 1), ...inImage(image, req.argv.slice(sep + 1), req.cwd)]
      : inImage(image, req.argv, req.cwd);
  return { argv, env: req.env, enterGroup: req.enterGroup };
}

/** A job spawned by Node (which forks the agent): where there is no launcher, or it failed. */
function nodeSpawn(req: SpawnRequest): ChildProcess {
  const [file, ...args] = req.argv as [string, ...string[]];
  // detached: setsid(), so the job leads its own process group and a
  // kill of -pid reaches every descendant that did not leave it.
  const how = { env: req.env, cwd: req.cwd, detached: true, stdio: 'pipe' } as const;
  // A command that cannot be run is left to Node's own spawn, so that it
  // fails the same way (ENOENT, EACCES) with or without limits.
  if (req.enterGroup === undefined || !runnable(file, req.env.PATH, req.cwd))
    return spawn(file, args, how);
  // A job enters its group before its command runs: `echo 0` into
  // cgroup.procs moves the writer, and the exec keeps the group. Moving it
  // after the spawn would leave what it allocates first charged outside its
  // cap. One busybox sh more per job, only where the launcher is not there.
  return spawn('/bin/sh', ['-c', 'echo 0 >"$0" && exec "$@"', req.enterGroup, ...req.argv], how);
}

export interface LinuxPlatformOptions {
  /** Environment the agent was started with (jobs inherit it minus MVIRT_*). */
  env?: NodeJS.ProcessEnv;
  /** Where cgroup v2 is mounted (the µOS's rcS makes agent/ and jobs/ there). */
  cgroupRoot?: string;
  /** The vsock helper (default VSOCK_HELPER, which the µOS image installs). */
  vsockHelper?: string;
  /** The imported image's defaults (default: what rcS mounted, protocol/image.ts). */
  image?: ImageRuntime | null;
  /** tty jobs' pty helper and size files (default PTY_HELPER, TTY_SIZE_DIR). */
  tty?: { helper: string; sizeDir: string };
  /** The job launcher (default LAUNCH_HELPER); null or absent on disk: Node spawns jobs. */
  launcher?: string | null;
}

/** Whether `file` names an executable file, as execvp would look for it. */
function runnable(file: string, pathVar: string | undefined, cwd: string | undefined): boolean {
  const dirs = file.includes('/') ? [''] : (pathVar ?? DEFAULT_PATH).split(':');
  return dirs.some((d) => {
    const p = path.resolve(cwd ?? '/', d, file);
    try {
      accessSync(p, constants.X_OK);
      return statSync(p).isFile();
    } catch {
      return false;
    }
  });
}

export function createLinuxPlatform(o: LinuxPlatformOptions = {}): Platform {
  const env = o.env ?? process.env;
  const vsockHelper = o.vsockHelper ?? VSOCK_HELPER;
  // process.uptime() counts from this process's start, so this is the exec time
  // even though JavaScript started running later.
  const processStartS = uptimeS() - process.uptime();
  const groups = createJobGroups({ root: o.cgroupRoot });
  const image = o.image === undefined ? readImageRuntime() : o.image;
  const helper = createHelperShell({ PATH: DEFAULT_PATH });
  const clock = createClockSetter({
    wallMs: () => Date.now(),
    monoMs: () => performance.now(),
    wait: (ms) => new Promise((r) => setTimeout(r, ms)),
    async setSeconds(s) {
      const argv = ['date', '-u', '-s', `@${s}`];
      const code = await helper.run(argv).catch(() => null);
      // No helper shell to be had: a spawn of our own, which says why it fails.
      if (code === null) return run(argv);
      if (code !== 0) throw new Error(`${argv.join(' ')}: exit ${code}`);
    },
  });

  const ttyPlaces = o.tty ?? { helper: PTY_HELPER, sizeDir: TTY_SIZE_DIR };
  const launcherPath = o.launcher === undefined ? LAUNCH_HELPER : o.launcher;
  const launcher = launcherPath === null ? null : launcherAt(launcherPath);
  return {
    image,
    spawn(req) {
      const r = image === null ? req : imageRequest(image, req, ttyPlaces.helper);
      return launcher ? launcher.spawn(r, () => nodeSpawn(r)) : nodeSpawn(r);
    },
    limitedGroup: (_jobId, limits) => groups.limited(limits),
    killGroup(pgid, signal) {
      try {
        process.kill(-pgid, signal);
        return true;
      } catch {
        return false;
      }
    },
    async listDir(p) {
      return readdir(p).catch(() => []);
    },
    async readText(p) {
      try {
        return await readFile(p, 'utf8');
      } catch {
        return null;
      }
    },
    async statfs(p) {
      try {
        const s = await statfs(p);
        return { totalBytes: s.blocks * s.bsize, usedBytes: (s.blocks - s.bfree) * s.bsize };
      } catch {
        return null;
      }
    },
    async cmdline() {
      return readFile('/proc/cmdline', 'utf8').catch(() => '');
    },
    uname() {
      return { release: os.release(), hostname: os.hostname() };
    },
    async openChannel(spec: ChannelSpec) {
      switch (spec.kind) {
        case 'virtio-serial': {
          const dev = spec.device ?? findVirtioPort(spec.portName);
          if (!dev) throw new Error(`no virtio-serial port named ${spec.portName} yet`);
          return openPollableDevice(dev);
        }
        case 'tcp':
          return openTcp(spec.host, spec.port);
        case 'vsock':
          // Node has no AF_VSOCK: the µOS's helper dials and relays (./vsock.ts).
          if (!existsSync(vsockHelper))
            throw new UnsupportedChannelError(
              'vsock',
              `no ${vsockHelper} in this guest (Node has no AF_VSOCK; the µOS image carries the helper)`,
            );
          return openRelay(vsockHelper, [String(spec.cid), String(spec.port)]);
      }
    },
    // Half-open: a server's FIN ends one direction of the stream, not both.
    // A service whose accept backlog is full (busybox httpd's is 9) drops
    // SYNs and the kernel retries after 1, 3, 7… s: under TCG 20 connections
    // at once took over 10 s, so the timeout is the host's (60 s) more or less.
    connectLoopback: (port: number) => openTcp('127.0.0.1', port, true, PORT_CONNECT_TIMEOUT_MS),
    async power(action: PowerAction) {
      // busybox init: SIGUSR2 = poweroff, SIGTERM = reboot (its orderly path:
      // shutdown actions, kill, sync, unmount). `-f` bypasses init.
      const force = () =>
        spawn(action, ['-f'], { stdio: 'ignore', detached: true }).on('error', () => undefined);
      try {
        process.kill(1, action === 'poweroff' ? 'SIGUSR2' : 'SIGTERM');
      } catch {
        force();
        return;
      }
      setTimeout(force, POWER_FALLBACK_MS);
    },
    async readIdentity() {
      try {
        return await readFile(IDENTITY_PATH);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
        throw err;
      }
    },
    setClock: (nowMs) => clock.set(nowMs),
    prepare() {
      helper.warm();
      launcher?.warm();
    },
    async mixEntropy(bytes) {
      // Written bytes are mixed into the pool but not credited: crediting
      // needs the RNDADDENTROPY ioctl, which Node cannot make. Restores are
      // covered by the kernel itself: its vmgenid driver reseeds the RNG when
      // the host's vmgenid device says the VM was restored.
      await writeFile('/dev/urandom', bytes);
    },
    async setHostname(name) {
      await writeFile('/proc/sys/kernel/hostname', name);
      // /etc/hostname links here (rcS writes it at boot).
      await writeFile('/run/hostname', `${name}\n`).catch(() => undefined);
    },
    configureNic,
    tty: ttyPlaces,
    async writeText(p, text) {
      await mkdir(path.dirname(p), { recursive: true });
      const tmp = `${p}.${process.pid}.tmp`;
      await writeFile(tmp, text);
      await rename(tmp, p);
    },
    async removeFile(p) {
      await rm(p, { force: true });
    },
    fs: createNodeFs(),
    jobEnv() {
      const out: Record<string, string> = {};
      for (const [k, v] of Object.entries(env)) {
        if (v !== undefined && !k.startsWith('MVIRT_')) out[k] = v;
      }
      out.PATH ??= DEFAULT_PATH;
      out.HOME ??= '/root';
      return out;
    },
    clock: {
      now: () => Date.now(),
      uptimeS,
      processStartS: () => processStartS,
    },
  };
}

/** Files and commands for the cloud-init subset, as root in the guest. */
export function createLinuxSeedIo(): SeedIo {
  return {
    readText: (p) => readFile(p, 'utf8').catch(() => null),
    async writeFile(p, data, o) {
      await mkdir(path.dirname(p), { recursive: true });
      await writeFile(p, data, { mode: o.mode, flag: o.append ? 'a' : 'w' });
      await chmod(p, o.mode); // mode applies only when the file is created
    },
    async run(argv, logFile) {
      await mkdir(path.dirname(logFile), { recursive: true });
      const log = await open(logFile, 'a');
      try {
        return await new Promise<number>((resolve) => {
          const [file, ...args] = argv as [string, ...string[]];
          const child = spawn(file, args, {
            stdio: ['ignore', log.fd, log.fd],
            env: { PATH: DEFAULT_PATH, HOME: '/root' },
          });
          child.once('error', () => resolve(127));
          child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
        });
      } finally {
        await log.close();
      }
    },
  };
}
