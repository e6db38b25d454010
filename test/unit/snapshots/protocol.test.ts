/**
 * The protocol's rules for snapshots and forks, checked on the schemas every
 * controller's request goes through: what a fork may and may not choose,
 * template snapshot names reserved, the snapshot methods' params, and the
 * identity handed to a restored guest never growing past its fixed size.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeIdentity, IDENTITY_BYTES, type Identity } from '../../../protocol/agent.js';
import { MAX_FORKS, PARAMS, TEMPLATE_SNAPSHOT_PREFIX } from '../../../protocol/rpc.js';
import { formatIssues } from '../../../protocol/validate.js';

const problem = (method: keyof typeof PARAMS, params: unknown): string | null => {
  const r = PARAMS[method].safeParse(params);
  return r.success ? null : formatIssues(r.error);
};

describe('vm.create from a snapshot', () => {
  test('a fork takes a name, kind and metadata; count and wait go with it', () => {
    for (const p of [
      { name: 'f', fromSnapshot: 'warm' },
      { name: 'f', fromSnapshot: 'snap-0123456789ab', count: 1 },
      { name: 'f', fromSnapshot: 'warm', count: MAX_FORKS, wait: true },
      { name: 'f', fromSnapshot: 'warm', kind: 'ephemeral', metadata: { a: 'b' } },
      { name: 'f', fromSnapshot: 'warm', dryRun: true, wait: false },
    ])
      assert.equal(problem('vm.create', p), null, JSON.stringify(p));
  });

  test('what the snapshot decides cannot be chosen with it', () => {
    for (const extra of [
      { image: 'default' },
      { vcpus: 2 },
      { memoryMiB: 512 },
      { backend: 'qemu' },
      { network: { mode: 'none' } },
      { disks: [{ volume: 'data' }] },
      { userData: '#cloud-config\n' },
      { metaData: 'instance-id: x\n' },
      { networkConfig: 'version: 2\n' },
    ]) {
      const why = problem('vm.create', { name: 'f', fromSnapshot: 'warm', ...extra });
      assert.match(
        why ?? 'accepted',
        /a VM from a snapshot takes image, size, backend, network, disks and cloud-init from the snapshot/,
        Object.keys(extra)[0],
      );
    }
  });

  test('count and wait without fromSnapshot, or a count out of range, are refused', () => {
    for (const p of [
      { name: 'f', count: 2 },
      { name: 'f', wait: true },
      { name: 'f', wait: false },
    ])
      assert.match(
        problem('vm.create', p) ?? 'accepted',
        /count and wait go with fromSnapshot/,
        JSON.stringify(p),
      );
    for (const count of [0, -1, MAX_FORKS + 1, 1.5, '2'])
      assert.notEqual(
        problem('vm.create', { name: 'f', fromSnapshot: 'warm', count }),
        null,
        String(count),
      );
    assert.notEqual(problem('vm.create', { name: 'f', fromSnapshot: '' }), null);
    assert.notEqual(problem('vm.create', { name: 'f', fromSnapshot: '../x' }), null);
    // A cold VM is unchanged by all this.
    assert.equal(problem('vm.create', { name: 'f', image: 'default', vcpus: 2 }), null);
  });
});

describe('snapshot methods', () => {
  test("vm.snapshot: template names are mvirtd's own", () => {
    assert.equal(problem('vm.snapshot', { vm: 'web', name: 'warm' }), null);
    assert.equal(problem('vm.snapshot', { vm: 'web', name: 'my-mvirt-template-1' }), null);
    const why = problem('vm.snapshot', { vm: 'web', name: `${TEMPLATE_SNAPSHOT_PREFIX}default` });
    assert.match(
      why ?? 'accepted',
      /names starting mvirt-template- are mvirtd's template snapshots/,
    );
    assert.notEqual(problem('vm.snapshot', { vm: 'web' }), null, 'a name is needed');
    assert.notEqual(problem('vm.snapshot', { vm: 'web', name: 'a/b' }), null);
    assert.notEqual(problem('vm.snapshot', { vm: 'web', name: 'warm', extra: 1 }), null);
  });

  test('snapshot.get, list and delete', () => {
    assert.equal(problem('snapshot.get', { snapshot: 'warm' }), null);
    assert.notEqual(problem('snapshot.get', {}), null);
    assert.equal(problem('snapshot.list', undefined), null);
    assert.equal(problem('snapshot.list', {}), null);
    assert.equal(problem('snapshot.list', { vm: 'web' }), null);
    assert.notEqual(problem('snapshot.list', { image: 'default' }), null);
    assert.equal(problem('snapshot.delete', { snapshot: 'warm', dryRun: true }), null);
    assert.notEqual(
      problem('snapshot.delete', { snapshot: 'warm', force: true }),
      null,
      'no force',
    );
    assert.equal(problem('vm.suspend', { vm: 'web' }), null);
    assert.notEqual(problem('vm.suspend', { vm: 'web', name: 'x' }), null);
  });
});

describe('encodeIdentity', () => {
  const base: Identity = { v: 1, generation: 1, vmId: 'vm-1', hostname: 'h', entropy: 'AAAA' };

  test('padded with spaces to exactly IDENTITY_BYTES', () => {
    const b = encodeIdentity(base);
    assert.equal(b.length, IDENTITY_BYTES);
    const json = JSON.stringify(base);
    assert.equal(new TextDecoder().decode(b.subarray(0, json.length)), json);
    assert.ok(b.subarray(json.length).every((c) => c === 0x20));
  });

  test('refuses an identity that does not fit, and one that is not an identity', () => {
    const big: Identity = {
      ...base,
      vmId: 'v'.repeat(128),
      hostname: 'h'.repeat(64),
      entropy: 'A'.repeat(512),
      token: 't'.repeat(256),
      net: {
        mac: '52:54:00:12:34:56',
        ip: 'i'.repeat(64),
        gw: 'g'.repeat(64),
        dns: 'd'.repeat(64),
      },
    };
    assert.throws(() => encodeIdentity(big), /^Error: identity is \d+ bytes, more than 1024$/);
    // Right at the limit it fits (every field within its own bound), one byte more does not.
    const near: Identity = {
      ...base,
      vmId: 'v'.repeat(128),
      hostname: 'h'.repeat(64),
      entropy: 'A'.repeat(512),
      token: '',
      net: { mac: '52:54:00:12:34:56', ip: 'i'.repeat(64) },
    };
    const room = IDENTITY_BYTES - JSON.stringify(near).length;
    assert.ok(room > 0 && room < 256, `${room} bytes fit in a token`);
    const full = encodeIdentity({ ...near, token: 't'.repeat(room) });
    assert.equal(full.length, IDENTITY_BYTES);
    assert.ok(
      full.every((c) => c !== 0x20),
      'no padding left',
    );
    assert.throws(
      () => encodeIdentity({ ...near, token: 't'.repeat(room + 1) }),
      /identity is 1025 bytes, more than 1024/,
    );
    assert.throws(() => encodeIdentity({ ...base, v: 2 } as unknown as Identity));
    assert.throws(() => encodeIdentity({ ...base, extra: 1 } as unknown as Identity));
  });
});
