/**
 * The backends the conformance suite (test/unit/hypervisors/backend-conformance.test.ts)
 * runs against, one case each: how to make the backend, and what only a
 * test may look at (the VMM's own view of its disks). cloud-hypervisor and
 * Firecracker run as the spec-checked fake VMMs of harness/fake-vmm/; a
 * QEMU case (real QEMU under TCG, with an image) is meant to be added here
 * by whoever wires the suite into the integration run.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { createCloudHypervisorBackend } from '../../host/hypervisors/cloud-hypervisor/backend.js';
import { createFirecrackerBackend } from '../../host/hypervisors/firecracker/backend.js';
import { createRestClient } from '../../host/hypervisors/rest.js';
import type { Hypervisor } from '../../host/hypervisors/types.js';
import { VMM_FILES } from '../../host/hypervisors/vmm-common.js';
import { VIOLATIONS_FILE } from '../../harness/fake-vmm/common.js';

const FAKE_BIN = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../harness/fake-vmm/bin',
);
export const fakeVmmBinary = (name: 'cloud-hypervisor' | 'firecracker'): string =>
  path.join(FAKE_BIN, name);

export interface BackendCase {
  name: string;
  /** kvmPath: a file standing in for /dev/kvm (the fakes need none). */
  make(log: Logger, o: { kvmPath: string; binary?: string }): Hypervisor;
  /** Ids of the disks the VMM has now (hot-plug checks), straight from its API. */
  diskIds?(dir: string): Promise<string[]>;
  /** Requests the fake VMM found against its spec, in this VM's folder. */
  violations(dir: string): string[];
}

function violationsIn(dir: string): string[] {
  const f = path.join(dir, VIOLATIONS_FILE);
  return existsSync(f) ? readFileSync(f, 'utf8').split('\n').filter(Boolean) : [];
}

export const BACKEND_CASES: BackendCase[] = [
  {
    name: 'cloud-hypervisor',
    make: (log, o) =>
      createCloudHypervisorBackend(
        {
          binary: o.binary ?? fakeVmmBinary('cloud-hypervisor'),
          kvmPath: o.kvmPath,
          agentConnectTimeoutMs: 20_000,
          // A fake's spawn is a Node start with tsx on a loaded 2-core host.
          launchTimeoutMs: 20_000,
        },
        log,
      ),
    async diskIds(dir) {
      const api = createRestClient({
        socketPath: path.join(dir, VMM_FILES.api),
        base: '/api/v1',
        name: 'ch',
      });
      try {
        const info = (await api.call('GET', '/vm.info')) as {
          config: { disks?: { id: string }[] };
        };
        return (info.config.disks ?? []).map((d) => d.id);
      } finally {
        api.close();
      }
    },
    violations: violationsIn,
  },
  {
    name: 'firecracker',
    make: (log, o) =>
      createFirecrackerBackend(
        {
          binary: o.binary ?? fakeVmmBinary('firecracker'),
          jailer: 'off',
          kvmPath: o.kvmPath,
          agentConnectTimeoutMs: 20_000,
          launchTimeoutMs: 20_000,
        },
        log,
      ),
    violations: violationsIn,
  },
];
