/**
 * Agent mode 'real' of the fake hypervisor (fake-vms.ts): the real agent core
 * (guest-agent/agent.ts) in the test process on the real Linux platform (jobs
 * are real processes in their own process groups, signals are real) except
 * for what makes it a guest: its channel is the next socket the daemon opened
 * to the VM's agent socket, a power-off ends the fake guest process (exit 0),
 * and the guest's death stops the agent and SIGKILLs every process group its
 * jobs started.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { PTY_HELPER } from '../images/helpers.js';
import type { Duplex } from 'node:stream';
import { createAgent, type Agent, type AgentOptions } from '../guest-agent/agent.js';
import { createLinuxPlatform } from '../guest-agent/platform/linux.js';
import type { Platform, PowerAction } from '../guest-agent/platform/types.js';
import type { Settings } from '../guest-agent/settings.js';
import { TEST_AGENT_OPTIONS } from './agent-options.js';
import { builtHelperPath, FAKE_TTY_DIR, launcherForTests } from './vsock-helper.js';
import type { FakeHypervisor, FakeVm, RealGuest } from './fake-vm-types.js';

/** Members of process group `pgid` that are still alive (zombies are dead: excluded). */
export function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${e}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // pid (comm) state ppid pgrp session …; comm may contain spaces and parens.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (f[0] !== 'Z' && f[0] !== 'X' && Number(f[2]) === pgid) out.push(Number(e));
  }
  return out;
}

/**
 * SIGKILL a job's process group, but only while it is still one of ours: its
 * members lead no other session than the job's (setsid made pgid = sid = the
 * job's pid), so a recycled pid of an unrelated process is never signalled.
 */
export function killJobGroup(pgid: number): void {
  const members = groupMembers(pgid);
  if (members.length === 0) return; // gone: its pgid may be someone else's by now
  for (const pid of members) {
    let sid = -1;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      sid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
    } catch {
      continue;
    }
    if (sid !== pgid) return;
  }
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

const REAL_AGENT_DEFAULTS: AgentOptions = {
  ...TEST_AGENT_OPTIONS,
  powerReplyWaitMs: 3000,
  console: process.env.MVIRT_TEST_LOG
    ? (line) => process.stderr.write(`fake-agent: ${line}\n`)
    : () => undefined,
};

/** Boot the real agent core for `vm` (at launch, and again after each guest reboot). */
export function bootRealGuest(hv: FakeHypervisor, vm: FakeVm): RealGuest {
  const linux = createLinuxPlatform({
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    launcher: launcherForTests(),
  });
  const settings: Settings = {
    vmId: vm.vmId,
    root: vm.root,
    channel: { kind: 'virtio-serial', portName: 'mvirt.agent' },
    // Quiet unless the daemon asks for telemetry (mvirtd --telemetry-interval-ms).
    telemetryMs: vm.telemetryMs ?? 3_600_000,
    tokenPath: '/run/mvirt/token',
    initUptimePath: `/fake-guest/${vm.vmId}/init-uptime`,
  };
  const pgids = new Set<number>();
  // The agent is made below, from a platform that needs this guest's state.
  const g: Omit<RealGuest, 'agent'> & { agent?: Agent } = {
    vmId: vm.vmId,
    pgids,
    dead: false,
    powerCalls: [],
    waiter: null,
    online: true,
    publishUp(kind, payload, topicVmId = vm.vmId) {
      g.agent!.outbox.push('output', `${vm.root}/agent/${topicVmId}/up/${kind}`, payload);
    },
    dropChannel() {
      for (const s of vm.sockets) s.destroy();
    },
    setOnline(online) {
      (g as { online: boolean }).online = online;
      if (!online) return g.dropChannel();
      while (g.waiter && vm.accepted.length > 0) {
        const s = vm.accepted.shift()!;
        if (!s.destroyed) g.waiter(s);
      }
    },
  };
  const platform: Platform = {
    spawn(req) {
      if (g.dead) throw new Error('the VM is gone');
      const p = linux.spawn(req);
      p.on('spawn', () => {
        if (p.pid === undefined) return;
        pgids.add(p.pid);
        hv.spawned.push({ vmId: vm.vmId, pid: p.pid, argv: [...req.argv] });
        // Started after the guest died (the spawn was in flight): it dies too.
        if (g.dead) killJobGroup(p.pid);
      });
      return p;
    },
    // Never the host's cgroups: fake guests' jobs run ungrouped.
    limitedGroup: () =>
      Promise.reject(
        new Error('per-job limits need cgroup v2 with memory groups, which this guest lacks'),
      ),
    killGroup: (pgid, sig) => linux.killGroup(pgid, sig),
    readText: async (p) => (p === settings.initUptimePath ? '0.10 0.05\n' : linux.readText(p)),
    statfs: (p) => linux.statfs(p),
    // No disks: the test host's /sys/block is not the guest's.
    listDir: async () => [],
    cmdline: async () => `mvirt.vm=${vm.vmId} mvirt.root=${vm.root} mvirt.channel=virtio-serial`,
    uname: () => ({ release: '6.1.0-fake-real', hostname: vm.vmId }),
    openChannel: () =>
      new Promise<Duplex>((resolve, reject) => {
        if (g.dead) return reject(new Error('the VM is gone'));
        for (let s = g.online ? vm.accepted.shift() : undefined; s; s = vm.accepted.shift()) {
          if (!s.destroyed) return resolve(s);
        }
        // Like a virtio-serial port: the guest's session starts when the host connects.
        g.waiter = (s) => {
          g.waiter = null;
          resolve(s);
        };
      }),
    async power(action: PowerAction) {
      g.powerCalls.push(action);
      if (action === 'reboot') rebootRealGuest(hv, vm);
      else signalGuest(vm.pid, 'SIGHUP'); // the fake guest exits 0: a poweroff
    },
    // No fw_cfg: the fake guest runs as its command line's VM. The test
    // host's clock, random pool, hostname and NICs are not the guest's: a
    // sync or restore changes none of them.
    readIdentity: async () => null,
    setClock: async () => 0,
    mixEntropy: async () => undefined,
    setHostname: async () => undefined,
    configureNic: async () => undefined,
    // The µOS's mvirt-pty once a test has built it (builtHelper); until then
    // a tty job fails to start, as in a guest without the helper.
    get tty() {
      return {
        helper: builtHelperPath(PTY_HELPER) ?? '/nonexistent/mvirt-pty',
        sizeDir: FAKE_TTY_DIR,
      };
    },
    writeText: (file, text) => linux.writeText(file, text),
    removeFile: (file) => linux.removeFile(file),
    jobEnv: () => linux.jobEnv(),
    clock: linux.clock,
  };
  const agent = createAgent(platform, settings, {
    ...REAL_AGENT_DEFAULTS,
    ...hv.options.realAgent,
  });
  const guest: RealGuest = Object.assign(g, { agent });
  vm.guest = guest;
  hv.guests.set(vm.vmId, guest);
  const delay = hv.options.realAgentStartDelayMs ?? 0;
  // unref: a guest that never got to start its agent does not keep the test alive.
  if (delay > 0) setTimeout(() => void (g.dead || agent.start()), delay).unref();
  else void agent.start();
  return guest;
}

/** A real-mode guest goes away (VM death or reset): its processes die with it. */
export function endRealGuest(vm: FakeVm): void {
  const g = vm.guest;
  if (!g || g.dead) return;
  g.dead = true;
  g.waiter = null;
  for (const s of vm.sockets) s.destroy();
  vm.accepted.length = 0;
  for (const pgid of g.pgids) killJobGroup(pgid);
  void g.agent.stop();
}

export function rebootRealGuest(hv: FakeHypervisor, vm: FakeVm): void {
  endRealGuest(vm);
  bootRealGuest(hv, vm);
}
function signalGuest(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}
