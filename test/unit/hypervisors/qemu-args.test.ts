import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import {
  buildKernelCmdline,
  buildQemuArgs,
  optValue,
  QEMU_CHANNELS,
  qemuPaths,
} from '../../../host/hypervisors/qemu/args.js';
import type { LaunchSpec } from '../../../host/hypervisors/types.js';
import { createQemuBackend } from '../../../host/hypervisors/qemu/backend.js';
import { CHANNELS } from '../../../protocol/agent.js';
import { MvirtError } from '../../../protocol/errors.js';
import { pino } from 'pino';

const spec = (over: Partial<LaunchSpec> = {}): LaunchSpec => ({
  vmId: 'vm1',
  vcpus: 2,
  memoryMiB: 512,
  kernel: '/img/vmlinuz',
  initrd: '/img/initrd',
  cmdline: 'console=ttyS0 quiet',
  disks: [{ path: '/img/root,1.squashfs', readOnly: true }],
  dir: '/var/lib/mvirt/vm/vm1',
  channel: 'virtio-serial',
  agentArgs: { 'mvirt.root': 'mvirt' },
  network: { mode: 'none' },
  consoleLogBytes: 1024,
  ...over,
});

const build = (
  s: LaunchSpec,
  machine: 'pc' | 'microvm' = 'pc',
  vsock?: { cid: number; fd: number },
) =>
  buildQemuArgs({
    spec: s,
    accel: 'tcg',
    machine,
    paths: qemuPaths(s.dir),
    tcgTbSizeMiB: 128,
    sandbox: true,
    ...(vsock ? { vsock } : {}),
  });

const after = (args: string[], flag: string): string[] =>
  args.flatMap((a, i) => (a === flag ? [args[i + 1] ?? ''] : []));

describe('qemu args', () => {
  it('appends the channel keys and agent args to the kernel command line', () => {
    assert.equal(
      buildKernelCmdline(spec()),
      'console=ttyS0 quiet mvirt.vm=vm1 mvirt.channel=virtio-serial mvirt.root=mvirt',
    );
  });

  it('refuses agent args that could inject kernel parameters or override backend keys', () => {
    const cases: Record<string, string>[] = [
      { 'mvirt.root': 'a b' },
      { 'mvirt.root': 'x"y' },
      { root: '/dev/sda' },
      { 'mvirt.vm': 'other' },
      { 'mvirt.channel': 'tcp' },
    ];
    for (const agentArgs of cases) {
      assert.throws(
        () => buildKernelCmdline(spec({ agentArgs })),
        (e: unknown) => e instanceof MvirtError && e.code === 'INVALID_PARAMS',
      );
    }
  });

  it('builds a pc machine with QMP, console, agent port, rng and read-only disks; starts paused', () => {
    const args = build(spec());
    assert.deepEqual(after(args, '-accel'), ['tcg,tb-size=128']);
    assert.deepEqual(after(args, '-machine'), ['pc,smm=off,vmport=off']);
    assert.ok(args.includes('-S'));
    assert.ok(args.includes('-nodefaults'));
    const chardevs = after(args, '-chardev');
    assert.ok(
      chardevs.includes('socket,id=qmp,path=/var/lib/mvirt/vm/vm1/qmp.sock,server=on,wait=off'),
    );
    assert.ok(
      chardevs.includes('socket,id=agent,path=/var/lib/mvirt/vm/vm1/agent.sock,server=on,wait=off'),
    );
    // The console on FIFOs (console.ts): a socket holds only 278 one-byte writes.
    assert.ok(chardevs.includes('pipe,id=console,path=/var/lib/mvirt/vm/vm1/console'));
    const devices = after(args, '-device');
    assert.ok(devices.includes('virtserialport,bus=vser0.0,chardev=agent,name=mvirt.agent'));
    assert.ok(devices.includes('virtio-rng-pci,rng=rng0'));
    // Commas in paths are doubled inside option lists.
    assert.deepEqual(after(args, '-drive'), [
      'file=/img/root,,1.squashfs,if=none,format=raw,id=d0,readonly=on',
    ]);
    assert.deepEqual(after(args, '-nic'), ['none']);
  });

  it('uses virtio-mmio devices on microvm and user networking when asked', () => {
    const args = build(spec({ network: { mode: 'user', mac: '52:54:00:12:34:56' } }), 'microvm');
    const devices = after(args, '-device');
    assert.ok(devices.includes('virtio-serial-device,id=vser0'));
    assert.ok(devices.includes('virtio-net-device,netdev=net0,mac=52:54:00:12:34:56'));
    // Without passt's socket: slirp restricted to nothing (never the host's loopback).
    assert.deepEqual(after(args, '-netdev'), ['user,id=net0,restrict=on']);
    const passt = build(
      spec({ network: { mode: 'user', mac: '52:54:00:12:34:56', socket: '/d/vm/v1/net.sock' } }),
      'microvm',
    );
    assert.deepEqual(after(passt, '-netdev'), [
      'stream,id=net0,server=off,addr.type=unix,addr.path=/d/vm/v1/net.sock',
    ]);
  });

  it('refuses bridge mode without a TAP, bad MACs, vsock, and socket paths too long', () => {
    const bad = (s: LaunchSpec) => assert.throws(() => build(s), MvirtError);
    bad(spec({ network: { mode: 'bridge' } }));
    bad(spec({ network: { mode: 'user', mac: 'zz' } }));
    bad(spec({ channel: 'vsock' }));
    bad(spec({ dir: `/tmp/${'x'.repeat(120)}` }));
    assert.deepEqual(
      after(build(spec({ network: { mode: 'bridge', tap: 'mvtap0' } })), '-netdev'),
      ['tap,id=net0,ifname=mvtap0,script=no,downscript=no'],
    );
  });

  it('the capability map claims exactly the agent channels the launch builds', () => {
    const hv = createQemuBackend({}, pino({ level: 'silent' }));
    assert.deepEqual(hv.capabilities.channels, [...QEMU_CHANNELS]);
    for (const channel of CHANNELS) {
      // tcp needs the guest's network (the daemon gives it one); the others need none.
      const s = spec({
        channel,
        network: channel === 'tcp' ? { mode: 'bridge', tap: 'mvtap0' } : { mode: 'none' },
      });
      if ((hv.capabilities.channels as readonly string[]).includes(channel))
        assert.ok(build(s).length > 0);
      else
        assert.throws(
          () => build(s),
          (e: unknown) =>
            e instanceof MvirtError &&
            e.code === 'CAPABILITY_UNSUPPORTED' &&
            (e.details as { backend?: string }).backend === 'qemu',
        );
    }
  });

  it('vsock where the host has vhost-vsock: the device with the CID and the inherited fd', () => {
    const s = spec({ channel: 'vsock' });
    const withVsock = (machine: 'pc' | 'microvm', vsock: { cid: number; fd: number }) =>
      build(s, machine, vsock);
    const pc = withVsock('pc', { cid: 7, fd: 4 });
    assert.ok(after(pc, '-device').includes('vhost-vsock-pci,guest-cid=7,vhostfd=4'));
    assert.match(after(pc, '-append')[0] ?? '', /mvirt\.channel=vsock/);
    const micro = withVsock('microvm', { cid: 3, fd: 3 });
    assert.ok(after(micro, '-device').includes('vhost-vsock-device,guest-cid=3,vhostfd=3'));
    for (const bad of [
      { cid: 2, fd: 3 },
      { cid: 3, fd: 1 },
      { cid: 3.5, fd: 3 },
    ])
      assert.throws(() => withVsock('pc', bad), MvirtError, JSON.stringify(bad));
    // Without the host's vsock, it is refused as before.
    assert.throws(() => build(s), MvirtError);
  });

  it('with a usable vhost-vsock device, vsock is claimed first, and the launch builds it', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qemu-vsock-cap-'));
    try {
      writeFileSync(path.join(dir, 'dev'), '');
      const hv = createQemuBackend(
        { vsockDir: dir, helperCacheDir: dir, vhostVsockDevice: path.join(dir, 'dev') },
        pino({ level: 'silent' }),
      );
      assert.deepEqual(hv.capabilities.channels, ['vsock', ...QEMU_CHANNELS]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('doubles commas', () => {
    assert.equal(optValue('a,b,,c'), 'a,,b,,,,c');
  });
});
