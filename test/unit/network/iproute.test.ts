/** The argv mvirt gives iproute2 and nft (a recording runner; the real commands run in the netns test). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { silentLogger } from '../../../host/log.js';
import { createNetDevices, natRuleset, type Runner } from '../../../host/network/iproute.js';
import type { MvirtError } from '../../../protocol/errors.js';

function recorder(links: unknown[] = [], fail?: (args: readonly string[]) => Error | null) {
  const calls: { file: string; args: string[]; stdin?: string }[] = [];
  const run: Runner = async (file, args, stdin) => {
    calls.push({ file, args: [...args], ...(stdin !== undefined ? { stdin } : {}) });
    const err = fail?.(args);
    if (err) throw err;
    return args.includes('-j') ? JSON.stringify(links) : '';
  };
  return { calls, run };
}

test('ensureBridge creates a missing bridge with the host address, else only refreshes it', async () => {
  const r = recorder([]);
  await createNetDevices(silentLogger(), r.run).ensureBridge('mvirt0', '10.213.0.1/16');
  assert.deepEqual(
    r.calls.slice(1).map((c) => c.args.join(' ')),
    [
      'link add name mvirt0 type bridge',
      'addr replace 10.213.0.1/16 dev mvirt0',
      'link set dev mvirt0 up',
    ],
  );
  const again = recorder([{ ifname: 'mvirt0', linkinfo: { info_kind: 'bridge' } }]);
  await createNetDevices(silentLogger(), again.run).ensureBridge('mvirt0', '10.213.0.1/16');
  assert.ok(!again.calls.some((c) => c.args.includes('add') && c.args.includes('type')));
});

test('ensureBridge refuses an interface of that name that is not a bridge', async () => {
  const r = recorder([{ ifname: 'eth0', linkinfo: {} }]);
  await assert.rejects(
    createNetDevices(silentLogger(), r.run).ensureBridge('eth0', '10.213.0.1/16'),
    (e: MvirtError) => e.code === 'NETWORK_ERROR' && /not a bridge/.test(e.message),
  );
});

test('TAPs: created on the bridge, only mvirt names deleted, listing filters by bridge', async () => {
  const r = recorder([
    { ifname: 'mv0123456789ab', linkinfo: { info_kind: 'tun' }, master: 'mvirt0' },
    { ifname: 'mv0123456789ac', linkinfo: { info_kind: 'tun' }, master: 'other0' },
    { ifname: 'tap0', linkinfo: { info_kind: 'tun' }, master: 'mvirt0' },
  ]);
  const dev = createNetDevices(silentLogger(), r.run);
  await dev.createTap('mv0123456789ab', 'mvirt0');
  assert.deepEqual(
    r.calls.map((c) => c.args.join(' ')),
    [
      'link del dev mv0123456789ab',
      'tuntap add dev mv0123456789ab mode tap',
      'link set dev mv0123456789ab master mvirt0 up',
    ],
  );
  r.calls.length = 0;
  await dev.deleteTap('eth0');
  assert.equal(r.calls.length, 0, 'never deletes an interface that is not an mvirt TAP');
  assert.deepEqual(await dev.listTaps('mvirt0'), ['mv0123456789ab']);
});

test('a failing command is a NETWORK_ERROR with the argv and what it printed', async () => {
  const r = recorder([], () =>
    Object.assign(new Error('exit 2'), { stderr: 'RTNETLINK answers: Operation not permitted' }),
  );
  await assert.rejects(
    createNetDevices(silentLogger(), r.run).createTap('mv0123456789ab', 'mvirt0'),
    (e: MvirtError) =>
      e.code === 'NETWORK_ERROR' &&
      /Operation not permitted/.test(e.message) &&
      /tuntap add/.test(e.message),
  );
  const missing = recorder([], () =>
    Object.assign(new Error('spawn nft ENOENT'), { code: 'ENOENT' }),
  );
  await assert.rejects(
    createNetDevices(silentLogger(), missing.run, async () => undefined).setNat({
      subnet: '10.213.0.0/16',
      bridge: 'mvirt0',
    }),
    /apt-get install nftables/,
  );
});

test('NAT: the ruleset is applied through nft -f - and forwarding is switched on', async () => {
  const r = recorder();
  const sysctls: string[] = [];
  const dev = createNetDevices(
    silentLogger(),
    r.run,
    async (k, v) => void sysctls.push(`${k}=${v}`),
  );
  await dev.setNat({ subnet: '10.213.0.0/16', bridge: 'mvirt0' });
  assert.deepEqual(r.calls[0]!.args, ['-f', '-']);
  assert.equal(r.calls[0]!.stdin, natRuleset('10.213.0.0/16', 'mvirt0'));
  assert.match(
    r.calls[0]!.stdin!,
    /ip saddr 10\.213\.0\.0\/16 ip daddr != 10\.213\.0\.0\/16 masquerade/,
  );
  assert.deepEqual(sysctls, ['net.ipv4.ip_forward=1']);
  await dev.setNat(null);
  assert.match(r.calls[1]!.stdin!, /delete table ip mvirt/);
});
