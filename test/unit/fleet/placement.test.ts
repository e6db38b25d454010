/** mvirt run --fleet's choice of host from the retained statuses (host/cli/hosts.ts placeJob). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HostStatus } from '../../../protocol/rpc.js';
import { placeJob } from '../../../host/cli/hosts.js';

const host = (
  hostId: string,
  o: {
    online?: boolean;
    freeMiB: number;
    freeVcpus?: number;
    images?: string[];
    labels?: Record<string, string>;
  },
): HostStatus => ({
  hostId,
  online: o.online ?? true,
  at: '2026-12-07T12:00:00.000Z',
  cpus: 4,
  memoryMiB: 8192,
  limits: { vcpus: 8, memoryMiB: 4096, maxVms: 10 },
  allocated: { vcpus: 8 - (o.freeVcpus ?? 4), memoryMiB: 4096 - o.freeMiB },
  images: o.images ?? ['default'],
  ...(o.labels ? { labels: o.labels } : {}),
});

const need = { vcpus: 1, memoryMiB: 256 };

test('the online host with the most free memory (within its limits) takes the job', () => {
  const hosts = [
    host('a', { freeMiB: 1024 }),
    host('b', { freeMiB: 3072 }),
    host('c', { freeMiB: 4096, online: false }),
  ];
  assert.deepEqual(placeJob(hosts, need), { hostId: 'b' });
});

test('hosts without the image or without room are passed over; none: why', () => {
  const hosts = [
    host('a', { freeMiB: 4096, images: ['other'] }),
    host('b', { freeMiB: 512, freeVcpus: 0 }),
    host('c', { freeMiB: 300 }),
  ];
  assert.deepEqual(placeJob(hosts, { ...need, image: 'default' }), { hostId: 'c' });
  const none = placeJob(hosts, { image: 'default', vcpus: 1, memoryMiB: 512 });
  assert.ok('problem' in none);
  assert.match(none.problem, /no online host has room for 1 vCPUs and 512 MiB \(b: 0 vCPUs/);
  const noImage = placeJob(hosts, { ...need, image: 'gpu' });
  assert.ok('problem' in noImage);
  assert.match(noImage.problem, /no online host has the image gpu/);
  const nobody = placeJob([host('z', { freeMiB: 4096, online: false })], need);
  assert.ok('problem' in nobody);
  assert.match(nobody.problem, /no mvirt host is online/);
});

test("labels: every one asked for must match the host's", () => {
  const hosts = [
    host('a', { freeMiB: 4096, labels: { gpu: 'false', zone: 'x' } }),
    host('b', { freeMiB: 1024, labels: { gpu: 'true', zone: 'x' } }),
    host('c', { freeMiB: 2048 }),
  ];
  assert.deepEqual(placeJob(hosts, { ...need, labels: { gpu: 'true' } }), { hostId: 'b' });
  assert.deepEqual(placeJob(hosts, { ...need, labels: { zone: 'x' } }), { hostId: 'a' });
  const none = placeJob(hosts, { ...need, labels: { gpu: 'true', zone: 'y' } });
  assert.ok('problem' in none);
  assert.match(none.problem, /no online host has the labels gpu=true, zone=y/);
});
