/**
 * VM networking with real QEMU guests. Bridge tests run mvirtd inside a
 * network namespace this file creates and removes, so the machine's own
 * interfaces are never touched: two bridged VMs ping each other and the host,
 * one agent dials home over TCP with its per-boot token (a wrong or old token
 * is refused, the token is on no host command line), NoCloud content is seen
 * in the guest, TAPs go with stop, delete and a kill -9 of mvirtd, addresses
 * are never handed out twice across restarts, and --nat installs the
 * masquerade. A user-mode VM reaches a service on the host's network address.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { JobRecord, VmRecord } from '../../protocol/rpc.js';
import type { RpcClient } from '../../harness/client.js';
import {
  BOOT_MS,
  explained,
  killQemusOf,
  ok,
  qemuDaemon,
  skipNoImage,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const NS = `mvirt-t${process.pid}`;
const JOB_MS = 120_000;
const GUEST_PORT = 1885;
const HOST_IP = '10.213.0.1';
const canNetns = process.getuid?.() === 0 && spawnSync('ip', ['-V']).status === 0;
const skip = skipNoImage || (!canNetns && 'needs root and iproute2 (network namespaces)');

type RunResult = JobRecord & { stdout?: string; stderr?: string };

const inNs = (...argv: string[]) =>
  spawnSync('ip', ['netns', 'exec', NS, ...argv], { encoding: 'utf8', timeout: 60_000 });

/** mvirt TAP names in the namespace. */
const taps = (): string[] =>
  (JSON.parse(inNs('ip', '-j', 'link', 'show').stdout || '[]') as { ifname: string }[])
    .map((l) => l.ifname)
    .filter((n) => /^mv[0-9a-f]{12}$/.test(n));
const tapOf = (vmId: string) => `mv${vmId.slice(3)}`;

before(() => {
  if (skip) return;
  spawnSync('ip', ['netns', 'del', NS]);
  execFileSync('ip', ['netns', 'add', NS]);
  execFileSync('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', 'lo', 'up']);
});
after(() => {
  if (!skip) spawnSync('ip', ['netns', 'del', NS]);
});

const run = async (c: RpcClient, vm: string, script: string): Promise<RunResult> =>
  ok(
    await c.call('job.run', { vm, argv: ['sh', '-c', script], wait: true }, { timeoutMs: JOB_MS }),
  );

async function start(c: RpcClient, vm: string): Promise<VmRecord> {
  const rec = ok(await c.call('vm.start', { vm, wait: true }, { timeoutMs: BOOT_MS + 10_000 }));
  trackPid(rec.pid);
  assert.equal(rec.state, 'ready', `${vm} ready`);
  return rec;
}

/** mosquitto_sub on the guest listener as VM `vmId` with `token`: did the broker refuse it? */
function guestLogin(vmId: string, token: string): { refused: boolean; out: string } {
  const r = inNs(
    'mosquitto_sub',
    ...['-h', HOST_IP, '-p', String(GUEST_PORT), '-V', 'mqttv311'],
    ...['-i', `agent-${vmId}`, '-u', vmId, '-P', token],
    ...['-t', `mvirt/never/${vmId}`, '-W', '2', '-C', '1'],
  );
  const out = `${r.stdout}${r.stderr}`;
  // The MQTT refusal (CONNACK 4), not a TCP failure, which would prove nothing.
  return { refused: /bad user name or password/i.test(out), out };
}

/** Every host process's command line, NUL-joined. */
function allCmdlines(): string {
  let all = '';
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      all += readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      /* gone */
    }
  }
  return all;
}

const USER_DATA = `#cloud-config
hostname: seeded-alpha
write_files:
  - path: /etc/mvirt-seed-test
    content: hello from the seed
    permissions: '0640'
runcmd:
  - echo runcmd-ran > /run/runcmd-marker
  - [sh, -c, 'echo argv-form >> /run/runcmd-marker']
`;

test('bridged VMs in a network namespace', { skip, timeout: 1_800_000 }, () =>
  explained(async () => {
    const dataDir = await tempDataDir('mvirt-net-');
    const args = ['--bridge', 'mvirt0', '--network', 'bridge', '--guest-dns', 'off'];
    let { c, d } = await qemuDaemon(dataDir, args, { netns: NS });

    // Addresses and MACs: allocated at create, distinct, in the subnet.
    const a = ok(
      await c.call('vm.create', {
        name: 'alpha',
        memoryMiB: 256,
        network: { mode: 'bridge', agentOverNetwork: true },
        userData: USER_DATA,
      }),
    );
    const b = ok(await c.call('vm.create', { name: 'beta', memoryMiB: 256 }));
    assert.equal(b.network.mode, 'bridge', 'the host default as root with a bridge');
    assert.match(a.ip!, /^10\.213\.\d+\.\d+$/);
    assert.match(a.mac!, /^02(:[0-9a-f]{2}){5}$/);
    assert.notEqual(a.ip, b.ip);
    assert.notEqual(a.mac, b.mac);
    assert.deepEqual(a.cloudInit, { userData: true, metaData: false, networkConfig: false });
    const bad = await c.call('vm.create', {
      name: 'gamma',
      network: { mode: 'user', agentOverNetwork: true },
    });
    assert.equal(!bad.ok && bad.error.code, 'INVALID_PARAMS');

    const ra = await start(c, 'alpha');
    const rb = await start(c, 'beta');
    assert.deepEqual(taps().sort(), [tapOf(a.id), tapOf(b.id)].sort());

    // NoCloud: hostname, a written file and both runcmd forms, before the agent was ready.
    const seen = await run(
      c,
      'alpha',
      'hostname; cat /etc/mvirt-seed-test; echo; stat -c %a /etc/mvirt-seed-test; cat /run/runcmd-marker',
    );
    assert.equal(seen.exitCode, 0, seen.stderr);
    assert.deepEqual(seen.stdout!.trim().split('\n'), [
      'seeded-alpha',
      'hello from the seed',
      '640',
      'runcmd-ran',
      'argv-form',
    ]);

    // The guests reach each other and the host's bridge address.
    for (const [from, to] of [
      ['alpha', b.ip!],
      ['beta', a.ip!],
      ['alpha', HOST_IP],
      ['beta', HOST_IP],
    ] as const) {
      const p = await run(c, from, `ping -c 2 -W 10 ${to}`);
      assert.equal(p.exitCode, 0, `${from} → ${to}: ${p.stdout}${p.stderr}`);
    }

    // alpha's agent came over TCP: its kernel command line names the guest
    // listener, the token is in the guest only, and it is on no host command line.
    const t1 = await run(c, 'alpha', 'cat /proc/cmdline /run/mvirt/token');
    const [cmdline, token] = t1.stdout!.trim().split('\n');
    assert.match(cmdline!, new RegExp(`mvirt.channel=tcp .*mvirt.addr=${HOST_IP}:${GUEST_PORT}`));
    assert.match(token!, /^[A-Za-z0-9_-]{43}$/);
    assert.ok(!cmdline!.includes(token!));
    assert.ok(!allCmdlines().includes(token!), 'the token is on no host command line');
    // A wrong token, another VM's token, or a good token for the wrong VM: refused.
    for (const [vmId, tok] of [
      [a.id, 'x'.repeat(43)],
      [b.id, token!],
    ] as const) {
      const r = guestLogin(vmId, tok);
      assert.ok(r.refused, `refused as ${vmId}: ${r.out}`);
    }

    // Stop alpha: its TAP goes; a new boot gets a new token and the old one is refused.
    ok(await c.call('vm.stop', { vm: 'alpha' }, { timeoutMs: 120_000 }));
    assert.deepEqual(taps(), [tapOf(b.id)]);
    await start(c, 'alpha');
    const t2 = (await run(c, 'alpha', 'cat /run/mvirt/token')).stdout!.trim();
    assert.notEqual(t2, token);
    const reused = guestLogin(a.id, token!);
    assert.ok(reused.refused, `the first boot's token is refused: ${reused.out}`);
    assert.equal((await run(c, 'alpha', 'true')).exitCode, 0, 'the agent still works');

    // kill -9 of mvirtd; beta's QEMU dies too, alpha's lives on. The restart
    // re-attaches alpha (its TAP stays, its agent redials with its token) and
    // removes beta's stale TAP.
    d.child.kill('SIGKILL');
    await d.exited;
    c.mqtt.end(true);
    process.kill(rb.pid!, 'SIGKILL');
    assert.deepEqual(taps().sort(), [tapOf(a.id), tapOf(b.id)].sort(), 'TAPs outlive mvirtd');
    ({ c, d } = await qemuDaemon(dataDir, args, { netns: NS }));
    assert.deepEqual(taps(), [tapOf(a.id)], "beta's stale TAP is gone, alpha's kept");
    assert.notEqual(ok(await c.call('vm.get', { vm: 'beta' })).state, 'ready');
    const again = await run(c, 'alpha', `ping -c 1 -W 10 ${HOST_IP}`);
    assert.equal(again.exitCode, 0, 'alpha is reachable after the restart');
    assert.ok(ra.pid);

    // No address twice across restarts, and delete releases.
    const g = ok(await c.call('vm.create', { name: 'gamma' }));
    assert.ok(![a.ip, b.ip].includes(g.ip), `gamma ${g.ip} is new`);
    ok(await c.call('vm.delete', { vm: 'beta' }));
    const h = ok(await c.call('vm.create', { name: 'delta' }));
    assert.ok(![a.ip, g.ip].includes(h.ip), `delta ${h.ip} is not in use`);
    ok(await c.call('vm.kill', { vm: 'alpha' }));
    assert.deepEqual(taps(), [], 'no TAP after kill');
    killQemusOf(dataDir);
  }),
);

test('--nat installs the nftables masquerade in the namespace', { skip, timeout: 300_000 }, () =>
  explained(async () => {
    const dataDir = await tempDataDir('mvirt-nat-');
    const nft = () => inNs('nft', 'list', 'table', 'ip', 'mvirt');
    await qemuDaemon(dataDir, ['--bridge', 'mvirt1', '--subnet', '10.214.0.0/24', '--nat'], {
      netns: NS,
    });
    const r = nft();
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /ip saddr 10\.214\.0\.0\/24 ip daddr != 10\.214\.0\.0\/24 masquerade/);
    assert.equal(readNs('/proc/sys/net/ipv4/ip_forward'), '1');
  }),
);

const readNs = (file: string): string => inNs('cat', file).stdout.trim();

// The machine's own network address: with passt a guest reaches what anyone on
// the network can, never the host's loopback (guest-reach.test.ts probes that).
const external = Object.values(os.networkInterfaces())
  .flat()
  .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;

test(
  "a user-mode VM reaches a service on the host's network address",
  { skip: skipNoImage || (!external && 'needs an external address'), timeout: 600_000 },
  () =>
    explained(async () => {
      const server = createServer((s) => s.end('hello from the host\n'));
      await new Promise<void>((resolve) => server.listen(0, external!, resolve));
      const { port } = server.address() as AddressInfo;
      try {
        const dataDir = await tempDataDir('mvirt-user-');
        const { c } = await qemuDaemon(dataDir, ['--network', 'user']);
        const vm = ok(await c.call('vm.create', { name: 'u1', memoryMiB: 256 }));
        assert.equal(vm.network.mode, 'user');
        assert.equal(vm.ip, undefined, 'user mode has no lease');
        await start(c, 'u1');
        // -w: through passt 2023.03 the host's FIN did not reach busybox nc
        // (it waited for ever after the data); the data is what is checked.
        const r = await run(c, 'u1', `timeout 30 nc -w 5 ${external} ${port} </dev/null`);
        assert.equal(r.stdout, 'hello from the host\n', r.stderr);
      } finally {
        server.close();
      }
    }),
);
