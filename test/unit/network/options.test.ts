/** mvirtd's networking options: defaults by privilege, clear CONFIG_INVALID errors. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseOptions } from '../../../host/daemon/options.js';
import type { MvirtError } from '../../../protocol/errors.js';

const parse = (argv: string[], root: boolean, resolv = '') =>
  parseOptions(argv, {}, root, () => resolv);
const invalid = (option: string) => (e: MvirtError) =>
  e.code === 'CONFIG_INVALID' && e.message.startsWith(`--${option}`);

test('as root: bridge mvirt0 and bridged VMs by default; otherwise user mode, no bridge', () => {
  const r = parse([], true, 'nameserver 127.0.0.53\nnameserver 192.0.2.53\n');
  assert.equal(r.bridge, 'mvirt0');
  assert.equal(r.network, 'bridge');
  assert.equal(r.bridgeRequired, false, 'a default bridge may fall back');
  assert.equal(r.subnet.cidr, '10.213.0.0/16');
  assert.equal(r.guestPort, 1885);
  assert.equal(r.guestDns, '192.0.2.53', 'the first non-loopback nameserver');
  assert.equal(r.nat, false);
  const u = parse([], false);
  assert.equal(u.bridge, false);
  assert.equal(u.network, 'user');
  assert.equal(u.guestDns, null);
});

test('explicit choices', () => {
  const o = parse(
    ['--bridge', 'br7', '--subnet', '192.168.50.0/24', '--nat', '--guest-dns', 'off'],
    true,
  );
  assert.equal(o.bridge, 'br7');
  assert.ok(o.bridgeRequired);
  assert.equal(o.subnet.hostIp, '192.168.50.1');
  assert.equal(o.nat, true);
  assert.equal(o.guestDns, null);
  const off = parse(['--bridge', 'off'], true);
  assert.equal(off.bridge, false);
  assert.equal(off.network, 'user');
});

test('bad networking options say what is wrong', () => {
  assert.throws(() => parse(['--network', 'wifi'], true), invalid('network'));
  assert.throws(() => parse(['--network', 'bridge'], false), invalid('network'));
  assert.throws(() => parse(['--bridge', 'a-very-long-bridge-name'], true), invalid('bridge'));
  assert.throws(() => parse(['--subnet', '10.0.0.1/24'], true), invalid('subnet'));
  assert.throws(() => parse(['--nat', '--bridge', 'off'], true), invalid('nat'));
  assert.throws(() => parse(['--guest-dns', 'dns.example'], true), invalid('guest-dns'));
  assert.throws(() => parse(['--guest-port', '0'], true), invalid('guest-port'));
});
