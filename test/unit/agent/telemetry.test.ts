import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockDevicesResult, Telemetry } from '../../../protocol/agent.js';
import { createLinuxPlatform } from '../../../guest-agent/platform/linux.js';
import {
  createTelemetrySampler,
  parseCpu,
  parseMounts,
  parseNetDev,
} from '../../../guest-agent/telemetry.js';
import { startHarness } from '../../support/agent-harness.js';

test('telemetry is sent on the interval and validates against the schema', async () => {
  const h = await startHarness({ settings: { telemetryMs: 100 } });
  try {
    const t = await h.waitFor('telemetry');
    assert.equal(Telemetry.safeParse(t).success, true);
    // From the fake /proc: 2 CPUs, 150 busy of 1000 jiffies since boot.
    assert.equal(t.cpuPercent, 30);
    assert.equal(t.memTotalMiB, 128);
    assert.equal(t.memUsedMiB, 32);
    assert.deepEqual([t.load1, t.load5, t.load15, t.procs], [0.5, 0.25, 0.1, 42]);
    assert.equal(t.uptimeS, 12.5);
    assert.deepEqual(
      t.disk.map((d) => d.mount),
      ['/', '/mnt/os'],
    );
    assert.deepEqual(t.net[1], {
      iface: 'eth0',
      rxBytes: 2000,
      rxPackets: 20,
      txBytes: 3000,
      txPackets: 30,
    });
    // Later samples are deltas: unchanged counters give 0; then 100 more busy
    // jiffies of 200 → 50 % of 2 CPUs = 100.
    h.platform.files.set('/proc/stat', 'cpu  200 0 50 850 100 0 0 0 0 0\ncpu0 1\ncpu1 1\n');
    const since = h.received.length;
    const t2 = await h.waitFor('telemetry', (m) => m.cpuPercent !== 0, { since });
    assert.equal(t2.cpuPercent, 100);
  } finally {
    await h.close();
  }
});

test('configure changes the telemetry interval', async () => {
  const h = await startHarness();
  try {
    assert.equal(h.all('telemetry').length, 0);
    const r = await h.request('configure', { id: 'c1', telemetryIntervalMs: 100 });
    assert.deepEqual(r, { id: 'c1', ok: true, result: { telemetryIntervalMs: 100 } });
    await h.waitFor('telemetry');
    const bad = await h.request('configure', { id: 'c2', telemetryIntervalMs: 5 });
    assert.equal(bad.error?.code, 'BAD_MESSAGE');
  } finally {
    await h.close();
  }
});

test('the Linux sampler on this host produces a valid message', async () => {
  const s = createTelemetrySampler(createLinuxPlatform());
  const t = await s.sample();
  const r = Telemetry.safeParse(t);
  assert.equal(r.success, true, r.success ? '' : r.error.message);
  assert.ok(t.memTotalMiB > 0 && t.uptimeS > 0);
  assert.ok(t.disk.some((d) => d.mount === '/'));
});

test('parsers cope with odd input', () => {
  assert.equal(parseCpu('intr 1\n'), null);
  assert.deepEqual(parseNetDev(''), []);
  assert.deepEqual(parseMounts(''), ['/']);
  assert.deepEqual(parseMounts('a /x\\040y ext4 rw 0 0\nb /p proc rw 0 0\n'), ['/', '/x y']);
});

test('block devices: name, serial, size, read-only and mount; loop devices and bad serials left out', async () => {
  const h = await startHarness({ settings: { telemetryMs: 100 } });
  try {
    const f = h.platform.files;
    const disk = (name: string, sectors: string, ro: string, serial?: string) => {
      f.set(`/sys/block/${name}/size`, `${sectors}\n`);
      f.set(`/sys/block/${name}/ro`, `${ro}\n`);
      if (serial !== undefined) f.set(`/sys/block/${name}/serial`, serial);
    };
    disk('vda', '65536', '1'); // the image's root disk: no serial
    disk('vdb', '32768', '0', 'vol-0123456789ab\n');
    disk('vdc', '2048', '0', 'bad\x1b[2Jserial'); // a serial is the host's, but a terminal escape is refused anyway
    disk('loop0', '8', '0');
    f.set('/proc/mounts', `${f.get('/proc/mounts')}/dev/vdb1 /mnt/my\\040data ext2 rw 0 0\n`);
    const since = h.received.length;
    const t = await h.waitFor('telemetry', (m) => (m.blockDevices?.length ?? 0) > 0, { since });
    assert.equal(Telemetry.safeParse(t).success, true);
    assert.deepEqual(t.blockDevices, [
      { name: 'vda', sizeBytes: 65536 * 512, readOnly: true, mount: '/mnt/os' },
      {
        name: 'vdb',
        sizeBytes: 32768 * 512,
        readOnly: false,
        serial: 'vol-0123456789ab',
        mount: '/mnt/my data',
      },
      { name: 'vdc', sizeBytes: 2048 * 512, readOnly: false },
    ]);
  } finally {
    await h.close();
  }
});

test('blockDevices on request: the devices now, each mounted one with its file system size and use', async () => {
  const h = await startHarness({});
  try {
    const f = h.platform.files;
    f.set('/sys/block/vda/size', '65536\n');
    f.set('/sys/block/vda/ro', '1\n');
    f.set('/sys/block/vdb/size', '32768\n');
    f.set('/sys/block/vdb/ro', '0\n');
    f.set('/sys/block/vdb/serial', 'vol-0123456789ab');
    const r = await h.request('blockDevices', { id: 'bd-1' });
    assert.equal(r.ok, true, JSON.stringify(r));
    const parsed = BlockDevicesResult.parse(r.result);
    assert.deepEqual(parsed.blockDevices, [
      // The fake platform's /mnt/os: 400 of 1000 bytes used.
      {
        name: 'vda',
        sizeBytes: 65536 * 512,
        readOnly: true,
        mount: '/mnt/os',
        totalBytes: 1000,
        usedBytes: 400,
      },
      { name: 'vdb', sizeBytes: 32768 * 512, readOnly: false, serial: 'vol-0123456789ab' },
    ]);
  } finally {
    await h.close();
  }
});
