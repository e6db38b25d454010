/**
 * What the controller listeners expose: the guest-network gate (bridge subnet
 * and bridge address refused, everything else let through; nothing refused
 * when bridging is off), the warnings for plaintext listeners off loopback,
 * and the parsing behind unix-socket peer credentials (`ss -xpnH`).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { guestNetworkGate, plainListenerWarnings } from '../../../host/daemon/exposure.js';
import { peerPidFromSs, userName } from '../../../host/broker/peer.js';
import { parseSubnet } from '../../../host/network/subnet.js';

test('the gate refuses the guest subnet and the bridge address, only while bridging', () => {
  const options = { bridge: 'mvirt0' as string | null, subnet: parseSubnet('10.213.0.0/16') };
  const gate = guestNetworkGate({ options } as never);
  assert.match(gate('10.213.4.7', '127.0.0.1') ?? '', /guest network 10\.213\.0\.0\/16/);
  assert.match(gate('::ffff:10.213.0.9', '::ffff:192.0.2.2') ?? '', /guest network/);
  assert.match(gate('192.0.2.50', '10.213.0.1') ?? '', /bridge address 10\.213\.0\.1/);
  assert.equal(gate('127.0.0.1', '127.0.0.1'), null);
  assert.equal(gate('192.0.2.50', '192.0.2.2'), null);
  options.bridge = null; // the bridge could not be made: no guest network exists
  assert.equal(gate('10.213.4.7', '10.213.0.1'), null);
});

test('plaintext listeners off loopback are warned about; TLS or loopback are not', () => {
  const w = plainListenerWarnings(
    { listen: '0.0.0.0:1883', wsListen: '127.0.0.1:1884', http: '[::]:8180' },
    false,
  );
  assert.equal(w.length, 2);
  assert.match(w[0]!, /--listen 0\.0\.0\.0:1883 speaks plaintext off loopback.*--tls-cert/);
  assert.match(w[1]!, /--http \[::\]:8180/);
  assert.deepEqual(
    plainListenerWarnings({ listen: '0.0.0.0:1883', wsListen: false, http: false }, true),
    [],
  );
  assert.deepEqual(
    plainListenerWarnings(
      { listen: 'localhost:1', wsListen: '[::1]:2', http: '127.0.0.2:3' },
      false,
    ),
    [],
  );
});

test('peer credentials: the process holding the other end of our socket, from ss -xpnH', () => {
  const ss = [
    'u_str ESTAB 0 0 /d/mvirt.sock 42630 * 42629 users:(("node",pid=26366,fd=21))',
    'u_str ESTAB 0 0 * 42629 * 42630 users:(("mvirt",pid=777,fd=20),("sh",pid=778,fd=3))',
    'u_str ESTAB 0 0 * 5 * 6',
  ].join('\n');
  assert.equal(peerPidFromSs(ss, '42630'), 777);
  assert.equal(peerPidFromSs(ss, '42629'), 26366);
  assert.equal(peerPidFromSs(ss, '6'), null, 'a peer without a process (gone) is unknown');
  assert.equal(peerPidFromSs(ss, '999'), null);
  assert.equal(userName(0), 'root');
});
