import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MvirtError } from '../../../protocol/errors.js';
import {
  intToIp,
  ipToInt,
  macFor,
  parseSubnet,
  pickFree,
  tapFor,
  TAP_RE,
} from '../../../host/network/subnet.js';

test('parseSubnet: host address, guest range, containment', () => {
  const s = parseSubnet('10.213.0.0/16');
  assert.equal(s.hostIp, '10.213.0.1');
  assert.equal(s.hostCidr, '10.213.0.1/16');
  assert.equal(intToIp(s.first), '10.213.0.2');
  assert.equal(intToIp(s.last), '10.213.255.254');
  assert.ok(s.contains('10.213.7.9'));
  assert.ok(!s.contains('10.214.0.1'));
  assert.ok(!s.contains('not an ip'));
  assert.equal(ipToInt('255.255.255.255'), 0xffffffff);
});

test('parseSubnet refuses what it cannot use, saying why', () => {
  for (const bad of ['10.0.0.0', '10.0.0.0/30', '10.0.0.0/7', '300.0.0.0/16', 'x/16']) {
    assert.throws(
      () => parseSubnet(bad),
      (e: MvirtError) => e.code === 'CONFIG_INVALID',
      bad,
    );
  }
  assert.throws(() => parseSubnet('10.0.0.5/24'), /did you mean 10\.0\.0\.0\/24/);
});

test('pickFree: lowest free guest address; NETWORK_EXHAUSTED when none', () => {
  const s = parseSubnet('192.168.7.0/29'); // guests .2 … .6
  assert.equal(pickFree(s, new Set()), '192.168.7.2');
  assert.equal(pickFree(s, new Set(['192.168.7.2', '192.168.7.3'])), '192.168.7.4');
  const all = new Set(['2', '3', '4', '5', '6'].map((n) => `192.168.7.${n}`));
  assert.throws(
    () => pickFree(s, all),
    (e: MvirtError) => e.code === 'NETWORK_EXHAUSTED',
  );
});

test('MAC and TAP names are stable, valid and distinct per VM', () => {
  const m = macFor('vm-0123456789ab');
  assert.equal(m, macFor('vm-0123456789ab'));
  assert.match(m, /^02(:[0-9a-f]{2}){5}$/, 'locally administered unicast');
  assert.notEqual(m, macFor('vm-0123456789ac'));
  assert.equal(tapFor('vm-0123456789ab'), 'mv0123456789ab');
  assert.match(tapFor('not-an-mvirt-id'), TAP_RE);
  assert.ok(tapFor('vm-0123456789ab').length <= 15);
});
