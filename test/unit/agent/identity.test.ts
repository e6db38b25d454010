import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeIdentity, IDENTITY_BYTES } from '../../../protocol/agent.js';
import { parseIdentity } from '../../../guest-agent/identity.js';
import { identity, IDENTITY_ENTROPY } from '../../support/agent-platform.js';

/** What the guest reads: JSON padded to the fw_cfg file's fixed size. */
const padded = (value: unknown, pad = ' ') => {
  const json = Buffer.from(JSON.stringify(value));
  return Buffer.concat([json, Buffer.alloc(IDENTITY_BYTES - json.length, pad)]);
};

test('identity: the padded JSON of the fw_cfg file parses, its entropy decoded', () => {
  const id = identity({
    generation: 7,
    vmId: 'vm-fork-1',
    hostname: 'fork-1',
    token: 'secret-token',
    net: { mac: '52:54:00:12:34:56', ip: '10.1.2.3/24', gw: '10.1.2.1', dns: '10.1.2.1' },
  });
  const raw = Buffer.from(encodeIdentity(id));
  assert.equal(raw.length, IDENTITY_BYTES);
  const r = parseIdentity(raw);
  assert.ok('identity' in r, JSON.stringify(r));
  assert.deepEqual(r.identity, id);
  assert.deepEqual(r.entropy, IDENTITY_ENTROPY);
  // NUL padding (a file read past its JSON) is padding too.
  assert.ok('identity' in parseIdentity(padded(id, '\0')));
});

test('identity: anything else is a problem that says what is wrong', () => {
  const problem = (raw: Buffer) => {
    const r = parseIdentity(raw);
    assert.ok('problem' in r, `accepted ${raw.toString().trim()}`);
    return r.problem;
  };
  assert.match(problem(Buffer.alloc(IDENTITY_BYTES, ' ')), /not JSON/);
  assert.match(problem(padded({ ...identity(), v: 2 })), /^v: /);
  assert.match(problem(padded({ ...identity(), extra: 1 })), /unknown field\(s\) extra/);
  assert.match(problem(padded(identity({ generation: -1 }))), /^generation: /);
  // Valid as an id, but not as a VM name (topics, client ids).
  assert.match(problem(padded(identity({ vmId: 'vm:1' }))), /^vmId vm:1: /);
  assert.match(problem(padded(identity({ entropy: 'not base64!' }))), /entropy: not base64/);
  const net = { mac: '52:54:00:12:34:56', ip: '10.1.2.3/24' };
  assert.match(
    problem(padded(identity({ net: { ...net, ip: '10.1.2.3' } }))),
    /net\.ip 10\.1\.2\.3:/,
  );
  assert.match(
    problem(padded(identity({ net: { ...net, dns: '1.1.1.1\nsearch evil' } }))),
    /net\.dns/,
  );
  assert.match(problem(padded(identity({ net: { ...net, gw: '-x' } }))), /net\.gw -x/);
});
