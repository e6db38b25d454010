/**
 * The confined hypervisor: each QEMU runs as its own unprivileged user, owns
 * only its VM's folder, sits in its own cgroup (cpu, memory, pids), inherits
 * only its stdio, gets an empty environment and runs under QEMU's seccomp
 * filter (`-sandbox`, args.ts), which each launch checks in /proc (verify()).
 *
 * One uid per VM, not one shared `mvirt-vm` user: QEMU's QMP socket lives in
 * its VM's folder, and whoever can connect to it controls that VM (quit,
 * migrate to a file, add devices). With a shared user every QEMU could reach
 * every other VM's QMP, console and agent sockets and read their seed disks;
 * with one uid per VM a compromised QEMU sees its own folder only. The uids
 * come from a reserved numeric range (no passwd entries needed: setpriv takes
 * numbers); a VM's uid is the owner of its folder, so it stays the same for
 * the folder's life and needs no table. gid = uid, no supplementary groups.
 *
 * The switch happens in a launcher step because Node cannot run code between
 * fork and exec: `setpriv` (util-linux) sets uid/gid, clears groups, drops
 * every capability (inheritable, ambient, bounding) and sets no_new_privs,
 * then execs QEMU in place (same pid), so the pid mvirtd holds is QEMU's.
 *
 * mvirtd needs root (CAP_SETUID/SETGID through setpriv, CAP_CHOWN for the
 * folders, write access to the cgroup tree, CAP_NET_ADMIN for TAPs when
 * bridging). Without root it says so once and runs QEMU as itself,
 * unconfined except for seccomp; system.info shows it.
 */
import { execFile as execFileCb } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { chmod, chown, lstat, readdir, readlink, stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import type { DiskSpec, HypervisorConfinement, LaunchSpec } from '../types.js';
import { probeCgroups, type CgroupDriver, type VmCgroup } from './cgroup.js';

/**
 * What a VM's QEMU costs beyond its guest RAM, for the cgroup memory limit.
 * Measured under TCG (QEMU 7.2, 1 vCPU, `pc`, tb-size 128, -m 256, default
 * µOS image, guest idle after boot): VmRSS 344 MiB, of which the guest RAM
 * mapping (/proc/<pid>/smaps) 160 MiB, so 184 MiB beyond guest RAM: 116 MiB
 * the TCG translation cache (mapped at its full tb-size, filled as code is
 * translated) and 68 MiB the rest (QEMU's text and heap, threads, device
 * state). The limit is guest RAM + tb-size in full + this base, 68 rounded up.
 */
export const QEMU_OVERHEAD_BASE_MIB = 96;
/** Thread pool (up to 64 workers), RCU, I/O and vCPU threads, with room. */
export const QEMU_PIDS_MAX = 128;

const execFile = promisify(execFileCb);
const TUN = '/dev/net/tun';

/**
 * A TAP without an owner can be attached only with CAP_NET_ADMIN, which the
 * VM's QEMU does not have; `ip tuntap` cannot change the owner of an existing
 * TAP (TUNSETIFF: busy), so the TAP the network module made is made again,
 * same name and bridge, owned by the VM's uid. Follow-up: let the network
 * module create it with that owner in the first place.
 */
async function handTapTo(tap: string, uid: number, log: Logger): Promise<void> {
  // Opening /dev/net/tun is harmless by itself (attaching to a TAP checks its
  // owner), so udev makes it 0666 on every standard distribution; hosts
  // without udev (containers, these dev machines: 0600) get the same mode.
  const tun = await stat(TUN);
  if ((tun.mode & 0o006) !== 0o006) {
    await chmod(TUN, 0o666);
    log.info({ path: TUN }, 'made /dev/net/tun 0666 (udev default) so VM users can open their TAP');
  }
  const master = path.basename(await readlink(`/sys/class/net/${tap}/master`));
  const ip = (...args: string[]) => execFile('ip', args);
  await ip('link', 'del', 'dev', tap);
  await ip('tuntap', 'add', 'dev', tap, 'mode', 'tap', 'user', String(uid), 'group', String(uid));
  await ip('link', 'set', 'dev', tap, 'master', master, 'up');
}

const RELEASE_BACKOFF_MS = [50, 100, 200, 400, 800, 1600, 3200];

/** Reserved uid/gid range for per-VM QEMU users (well above login and subordinate ids). */
export const DEFAULT_UID_BASE = 0x6d760000;
export const DEFAULT_UID_COUNT = 65536;

/** user: QEMU runs as its VM's own uid (else as mvirtd's); reasons: why a part is off. */
export type Confinement = HypervisorConfinement;

export interface ConfineOptions {
  /** false: run QEMU as mvirtd's user, no cgroup (seccomp stays as configured). */
  enabled: boolean;
  seccomp: boolean;
  uidBase: number;
  uidCount: number;
  /** TCG translation cache, part of the memory limit. */
  tcgTbSizeMiB: number;
  /** setpriv (util-linux), looked up on PATH unless absolute. */
  setpriv: string;
  /** Tests: isRoot override. */
  isRoot?: boolean;
  /** Tests: /proc/self/mountinfo text. */
  mountinfo?: string;
}

/** How one VM's QEMU is started and what to undo at its end. */
export interface Confined {
  vmId: string;
  command: string;
  args: string[];
  /** Always empty: QEMU needs no environment variables. */
  env: Record<string, string>;
  uid: number | null;
  cgroup: VmCgroup | null;
}

export interface Confiner {
  readonly state: Confinement;
  /**
   * Own the folder, make the cgroup, and the command line that drops
   * privileges. `handOver`: files mvirtd made in the folder for QEMU to open
   * (the console FIFOs), given to the VM's user.
   */
  prepare(
    spec: LaunchSpec,
    binary: string,
    qemuArgs: string[],
    handOver?: readonly string[],
  ): Promise<Confined>;
  /**
   * Hot-plug: a disk linked into the running VM's folder `dir`, given to the
   * VM's user (the folder's owner) by the rule a boot uses. Nothing to do
   * when QEMU runs as mvirtd's user.
   */
  handOverDisk(dir: string, disk: DiskSpec): Promise<void>;
  /**
   * A file or socket mvirtd made in the running VM's folder `dir` for QEMU
   * to open (the socket a saved state streams into), given to the VM's user.
   */
  handOverFile(dir: string, file: string): Promise<void>;
  /** Put the freshly spawned (still paused) QEMU into its cgroup. */
  join(confined: Confined, pid: number): Promise<void>;
  /**
   * Once QEMU answers QMP (it has set itself up): its seccomp mode and uid as
   * /proc reports them; throws when they are not what was asked for.
   */
  verify(confined: Confined, pid: number): void;
  /** Remove the cgroup of the VM whose folder is `dir` once its process is gone. */
  release(dir: string, log: Logger): Promise<void>;
  /**
   * Recovery: remove every VM cgroup of this data folder that holds no
   * process (a VM that ended while mvirtd was down); busy ones stay.
   */
  sweep(vmRoot: string, log: Logger): Promise<void>;
}

/** o+r on the file itself (lstat: never through a link). */
async function readableByOthers(p: string): Promise<void> {
  const st = await lstat(p);
  if (!st.isFile()) throw new Error(`${p} is not a regular file`);
  if ((st.mode & 0o004) === 0) await chmod(p, (st.mode & 0o7777) | 0o004);
}

/**
 * One disk file in the VM's folder given to the VM's user, at boot (prepare)
 * and at hot-plug (handOverDisk): the same rule for both. Volumes are hard
 * links mvirtd made in the folder just now (vm/disks.ts): a volume attached
 * read-write becomes the VM's for the run and is given back when it ends.
 * One that other VMs may open too (attached read-only, or a qcow2 overlay's
 * template) stays mvirtd's and is only made readable: owning it, a QEMU taken
 * over by its guest could write what every other clone reads. (The file is
 * reachable only through the 0700 volumes folder and this VM's 0700 folder.)
 * Files outside the folder (the image's disk) are not touched here.
 */
async function handDiskTo(dir: string, uid: number, d: DiskSpec): Promise<void> {
  if (path.dirname(d.path) !== dir) return;
  if (d.shared) await readableByOthers(d.path);
  else await chown(d.path, uid, uid);
  for (const b of d.backing ?? []) {
    if (path.dirname(b.path) === dir) await readableByOthers(b.path);
  }
}

export function memoryLimitBytes(memoryMiB: number, tcgTbSizeMiB: number): number {
  return (memoryMiB + tcgTbSizeMiB + QEMU_OVERHEAD_BASE_MIB) * 1024 * 1024;
}

export function createConfiner(opts: ConfineOptions, log: Logger): Confiner {
  const isRoot = opts.isRoot ?? process.getuid?.() === 0;
  const setpriv = resolveProgram(opts.setpriv);
  const reasons: string[] = [];
  let cgroups: CgroupDriver | null = null;
  if (!opts.enabled) reasons.push('confinement disabled by configuration');
  else if (!isRoot) {
    reasons.push('mvirtd is not root: cannot switch QEMU to its own user or make cgroups');
  } else if (!setpriv) {
    reasons.push(`${opts.setpriv} not found: install util-linux`);
  } else {
    const probe = probeCgroups(opts.mountinfo);
    cgroups = probe.driver;
    if (!probe.driver) reasons.push(probe.reason);
  }
  if (!opts.seccomp) reasons.push('seccomp sandbox disabled by configuration');
  const state: Confinement = {
    user: opts.enabled && isRoot && setpriv !== null,
    cgroup: cgroups?.version ?? null,
    seccomp: opts.seccomp,
    reasons,
  };
  // Said once, at start: every VM of this daemon runs that way.
  if (reasons.length)
    log.warn({ confinement: state }, `QEMU runs unconfined: ${reasons.join('; ')}`);
  else log.info({ confinement: state }, 'QEMU runs confined (own uid, cgroup, seccomp)');

  /** uids handed out by this process but maybe not yet visible as folder owners. */
  const reserved = new Map<string, number>();
  const inRange = (uid: number) => uid >= opts.uidBase && uid < opts.uidBase + opts.uidCount;

  async function uidFor(dir: string, vmId: string): Promise<number> {
    const own = (await stat(dir)).uid;
    if (inRange(own)) return own;
    const taken = new Set<number>();
    const root = path.dirname(dir);
    for (const name of await readdir(root)) {
      try {
        const uid = (await stat(path.join(root, name))).uid;
        if (inRange(uid)) taken.add(uid);
      } catch {
        // removed meanwhile
      }
    }
    // No await from here on: two VMs starting at once never get the same uid.
    for (const uid of reserved.values()) taken.add(uid);
    for (let uid = opts.uidBase; uid < opts.uidBase + opts.uidCount; uid++) {
      if (!taken.has(uid)) {
        reserved.set(vmId, uid);
        return uid;
      }
    }
    throw new Error(`no free uid left in ${opts.uidBase}+${opts.uidCount}`);
  }

  /** Add the search bit for others (never read): QEMU must reach its own folder below. */
  async function traversable(dir: string) {
    const st = await stat(dir);
    if ((st.mode & 0o001) === 0) await chmod(dir, (st.mode & 0o7777) | 0o001);
  }

  /**
   * Once the data folder is traversable, any world-readable file in it could
   * be opened by name by a QEMU user: the database (mvirt.db, -wal, -shm) and
   * every other entry but vm/, images/ and unix sockets lose their permissions
   * for others. The control socket (mvirt.sock) keeps its mode: who may use it
   * is the socket's own policy, and a QEMU uid is just another local user there.
   */
  async function closeDataDir(dataDir: string, vmRoot: string) {
    for (const name of await readdir(dataDir)) {
      const p = path.join(dataDir, name);
      if (p === vmRoot || name === 'images') continue;
      try {
        const st = await stat(p);
        if (!st.isSocket() && st.mode & 0o007) await chmod(p, st.mode & 0o7770);
      } catch {
        // removed meanwhile
      }
    }
  }

  const prepared = new Set<string>();
  /** cgroup group of a data folder's VMs: daemons sharing a host never touch each other's. */
  const groupOf = (vmRoot: string) =>
    createHash('sha256').update(path.resolve(vmRoot)).digest('hex').slice(0, 12);
  /** VM ids between cgroup creation and their process joining: never swept. */
  const launching = new Set<string>();

  return {
    state,
    async prepare(spec, binary, qemuArgs, handOver = []) {
      if (!state.user)
        return {
          vmId: spec.vmId,
          command: binary,
          args: qemuArgs,
          env: {},
          uid: null,
          cgroup: null,
        };
      const vmRoot = path.dirname(spec.dir);
      const dataDir = path.dirname(vmRoot);
      if (!prepared.has(vmRoot)) {
        await traversable(vmRoot);
        // Only mvirtd's own layout (<data-dir>/vm/<id> beside mvirt.db) is
        // opened and closed here; any other parent is left as it is.
        if (path.basename(vmRoot) === 'vm' && existsSync(path.join(dataDir, 'mvirt.db'))) {
          await traversable(dataDir);
          await closeDataDir(dataDir, vmRoot);
        }
        prepared.add(vmRoot);
      }
      const uid = await uidFor(spec.dir, spec.vmId);
      await chown(spec.dir, uid, uid);
      await chmod(spec.dir, 0o700);
      // Files mvirtd put in the folder for QEMU (the seed disk, the console) become the VM's.
      for (const d of spec.disks) await handDiskTo(spec.dir, uid, d);
      for (const f of handOver) await chown(f, uid, uid);
      // Read-only inputs outside the folder (kernel, initrd, image disk) must be
      // readable by others: fail here with the file's name rather than in QEMU.
      for (const f of [spec.kernel, spec.initrd, ...spec.disks.map((d) => d.path)]) {
        if (path.dirname(f) === spec.dir) continue;
        const st = await stat(f);
        if ((st.mode & 0o004) === 0) {
          throw new Error(
            `${f} is not readable by the VM's user (mode ${(st.mode & 0o777).toString(8)}); make it world-readable`,
          );
        }
      }
      if (spec.network.mode === 'bridge' && spec.network.tap) {
        await handTapTo(spec.network.tap, uid, log);
      }
      // passt's socket (user mode) was bound with mvirtd's uid; connecting
      // needs write access, and QEMU connects as the VM's uid. Without this
      // the guest booted with a NIC and no network: QEMU's stream netdev
      // connects asynchronously and only logs its failure.
      if (spec.network.mode === 'user' && spec.network.socket !== undefined) {
        await chown(spec.network.socket, uid, uid);
      }
      let cgroup: VmCgroup | null = null;
      if (cgroups) {
        const group = groupOf(vmRoot);
        launching.add(spec.vmId);
        await cgroups.existing(group, spec.vmId).remove(); // a leftover of an earlier boot
        cgroup = await cgroups.create(group, spec.vmId, {
          vcpus: spec.vcpus,
          memoryBytes: memoryLimitBytes(spec.memoryMiB, opts.tcgTbSizeMiB),
          pids: QEMU_PIDS_MAX,
        });
      }
      return {
        vmId: spec.vmId,
        command: setpriv!,
        args: [
          `--reuid=${uid}`,
          `--regid=${uid}`,
          '--clear-groups',
          '--inh-caps=-all',
          '--ambient-caps=-all',
          '--bounding-set=-all',
          '--no-new-privs',
          '--',
          binary,
          ...qemuArgs,
        ],
        env: {},
        uid,
        cgroup,
      };
    },
    async handOverDisk(dir, disk) {
      if (!state.user) return;
      // The folder's owner is the VM's uid for the folder's life (uidFor).
      const uid = (await stat(dir)).uid;
      if (!inRange(uid)) throw new Error(`${dir} is not owned by a VM user (uid ${uid})`);
      await handDiskTo(dir, uid, disk);
    },
    async handOverFile(dir, file) {
      if (!state.user) return;
      const uid = (await stat(dir)).uid;
      if (!inRange(uid)) throw new Error(`${dir} is not owned by a VM user (uid ${uid})`);
      if (path.dirname(file) !== dir) throw new Error(`${file} is not in ${dir}`);
      await chown(file, uid, uid);
    },
    async join(confined, pid) {
      try {
        await confined.cgroup?.join(pid);
      } finally {
        launching.delete(confined.vmId);
      }
    },
    verify(confined, pid) {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const field = (k: string) => new RegExp(`^${k}:[ \t]*(.*)$`, 'm').exec(status)?.[1] ?? '';
      if (opts.seccomp && field('Seccomp').trim() !== '2') {
        throw new Error(`QEMU runs without its seccomp filter (Seccomp: ${field('Seccomp')})`);
      }
      const uids = field('Uid').split(/\s+/).filter(Boolean).map(Number);
      if (confined.uid !== null && !uids.every((u) => u === confined.uid)) {
        throw new Error(`QEMU runs as uid ${uids.join('/')}, not ${confined.uid}`);
      }
    },
    async release(dir, vlog) {
      const vmId = path.basename(dir);
      reserved.delete(vmId);
      launching.delete(vmId);
      if (!cgroups) return;
      const cg = cgroups.existing(groupOf(path.dirname(dir)), vmId);
      // An adopted QEMU (after a daemon restart) is not our child: we learn of
      // its end from /proc before its new parent reaps it, and a v1 cgroup
      // with an unreaped zombie refuses rmdir (EBUSY; seen on the dev
      // machines). v1 has no event for "empty", so retry with backoff
      // (about 6 s in all); a cgroup still busy then goes at the next sweep.
      for (const ms of RELEASE_BACKOFF_MS) {
        if (await cg.remove()) return;
        await delay(ms, undefined, { ref: false });
      }
      if (!(await cg.remove())) {
        vlog.warn({ vmId }, 'VM cgroup still busy; removed at its next boot or restart');
      }
    },
    async sweep(vmRoot, slog) {
      if (!cgroups) return;
      const group = groupOf(vmRoot);
      const removed: string[] = [];
      for (const name of await cgroups.list(group)) {
        if (launching.has(name)) continue;
        if (await cgroups.existing(group, name).remove()) removed.push(name);
      }
      if (removed.length)
        slog.info({ removed }, 'removed cgroups of VMs that ended while mvirtd was down');
    },
  };
}

/** Absolute path of an executable on PATH, or null (QEMU starts with an empty environment). */
export function resolveProgram(name: string, envPath = process.env.PATH ?? ''): string | null {
  const candidates = name.includes('/')
    ? [path.resolve(name)]
    : envPath
        .split(':')
        .filter(Boolean)
        .map((d) => path.join(d, name));
  for (const p of candidates) {
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return null;
}
