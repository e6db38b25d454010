/** The µOS cloud-init subset against an in-memory guest: what is applied, what is refused, once per boot. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { applySeed, SEED_DONE, type SeedIo } from '../../../guest-agent/cloud-init.js';

function guest(files: Record<string, string>) {
  const fs = new Map(
    Object.entries(files).map(([k, v]) => [k, { data: Buffer.from(v), mode: 0o644 }]),
  );
  const ran: string[][] = [];
  const io: SeedIo = {
    readText: async (p) => fs.get(p)?.data.toString() ?? null,
    async writeFile(p, data, o) {
      const prev = o.append ? (fs.get(p)?.data ?? Buffer.alloc(0)) : Buffer.alloc(0);
      fs.set(p, { data: Buffer.concat([prev, data]), mode: o.mode });
    },
    async run(argv) {
      ran.push([...argv]);
      return argv.includes('exit 3') ? 3 : 0;
    },
  };
  return { fs, ran, io };
}

const S = '/run/mvirt/seed';

test('cloud-config: hostname, write_files (text, b64, append, mode) and runcmd in order', async () => {
  const g = guest({
    [`${S}/meta-data`]: 'instance-id: vm-1\nlocal-hostname: from-meta\n',
    [`${S}/user-data`]: `#cloud-config
hostname: from-user
write_files:
  - path: /etc/a
    content: hello
    permissions: '0600'
  - path: /etc/b
    encoding: b64
    content: aGk=
  - path: /etc/a
    content: ' again'
    append: true
runcmd:
  - echo one
  - [touch, /run/two]
  - exit 3
packages: [curl]
`,
  });
  const r = await applySeed(g.io);
  assert.ok(r);
  assert.deepEqual(g.ran, [
    ['hostname', 'from-meta'],
    ['hostname', 'from-user'],
    ['/bin/sh', '-c', 'echo one'],
    ['touch', '/run/two'],
    ['/bin/sh', '-c', 'exit 3'],
  ]);
  assert.equal(g.fs.get('/etc/a')!.data.toString(), 'hello again');
  assert.equal(g.fs.get('/etc/a')!.mode, 0o644, 'the append entry gives its own (default) mode');
  assert.equal(g.fs.get('/etc/b')!.data.toString(), 'hi');
  assert.equal(g.fs.get('/etc/hostname')!.data.toString(), 'from-user\n');
  assert.ok(r.warnings.some((w) => /not supported by the µOS: packages/.test(w)));
  assert.ok(r.warnings.some((w) => /runcmd\[2\] exited with 3/.test(w)));
  // Once per boot: a restarted agent does not run it again.
  assert.ok(g.fs.has(SEED_DONE));
  g.ran.length = 0;
  assert.equal(await applySeed(g.io), null);
  assert.deepEqual(g.ran, []);
});

test('bad content is a warning, never a throw or a guess', async () => {
  const g = guest({
    [`${S}/meta-data`]: 'local-hostname: "bad host;rm -rf /"\n',
    [`${S}/user-data`]:
      '#cloud-config\nwrite_files:\n  - path: relative\n  - path: /x\n    permissions: rwx\nruncmd: {a: 1}\n: bad: yaml',
    [`${S}/network-config`]: 'version: 1\nconfig: []\n',
  });
  const r = await applySeed(g.io);
  assert.ok(r);
  assert.deepEqual(g.ran, [], 'nothing ran');
  assert.ok(r.warnings.some((w) => /not a valid host name/.test(w)));
  assert.ok(r.warnings.some((w) => /only version 2/.test(w)));
  assert.ok(r.warnings.some((w) => /user-data: invalid YAML/.test(w)));
});

test('network-config v2: addresses, gateway, routes and DNS through ip', async () => {
  const g = guest({
    [`${S}/meta-data`]: 'instance-id: vm-1\n',
    [`${S}/network-config`]: `network:
  version: 2
  ethernets:
    eth0:
      addresses: [10.9.0.5/24, fe80::1/64]
      gateway4: 10.9.0.1
      routes: [{to: 192.168.0.0/16, via: 10.9.0.254}]
      nameservers: {addresses: [10.9.0.53]}
`,
    [`${S}/user-data`]: '#!/bin/sh\necho script\n',
  });
  const r = await applySeed(g.io);
  assert.deepEqual(g.ran.slice(0, 4), [
    ['ip', 'link', 'set', 'dev', 'eth0', 'up'],
    ['ip', 'addr', 'replace', '10.9.0.5/24', 'dev', 'eth0'],
    ['ip', 'route', 'replace', 'default', 'via', '10.9.0.1', 'dev', 'eth0'],
    ['ip', 'route', 'replace', '192.168.0.0/16', 'via', '10.9.0.254'],
  ]);
  assert.deepEqual(g.ran[4], ['/run/mvirt/user-data-script'], 'a #! user-data runs as a script');
  assert.equal(g.fs.get('/run/mvirt/user-data-script')!.mode, 0o700);
  assert.equal(g.fs.get('/run/resolv.conf')!.data.toString(), 'nameserver 10.9.0.53\n');
  assert.ok(r!.warnings.some((w) => /fe80::1\/64.*IPv4 CIDR only/.test(w)));
});

test('no seed attached: nothing to do', async () => {
  const g = guest({});
  assert.equal(await applySeed(g.io), null);
  assert.equal(g.fs.has(SEED_DONE), false);
});
