/**
 * The backends the conformance suite (test/support/backend-conformance.ts)
 * runs against, one case each: how to make the backend, what its probe says,
 * the files it boots, and what only a test may look at (the VMM's own view
 * of its disks). cloud-hypervisor and Firecracker run as the spec-checked
 * fake VMMs of harness/fake-vmm/ (test/unit/hypervisors/backend-conformance.test.ts);
 * QEMU runs for real under TCG, booting the default µOS image with its real
 * agent (test/integration/backend-conformance-qemu.test.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { createCloudHypervisorBackend } from '../../host/hypervisors/cloud-hypervisor/backend.js';
import { createFirecrackerBackend } from '../../host/hypervisors/firecracker/backend.js';
import { createQemuBackend } from '../../host/hypervisors/qemu/backend.js';
import { bootFiles, type Manifest } from '../../images/manifest.js';
import { IMAGE_DIR } from './agent-vm.js';
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
  /** What its probe says here, and when its program is missing. */
  probe: { accel: string; version: RegExp; noBinary: RegExp; needsKvm: boolean };
  /** A real guest (slow to boot, needs to be up for ACPI); false for the fakes. */
  real: boolean;
  /** The files a VM boots (default: stand-ins the fakes accept). */
  bootFiles?(): { kernel: string; initrd: string; disk: string; cmdline: string };
  /** How long a hot-unplug may take: a real guest under TCG answers ACPI slowly. */
  unplugMs?: number;
  /** Per-describe timeout. */
  suiteTimeoutMs?: number;
  /** Ids of the disks the VMM has now (hot-plug checks), straight from its API. */
  diskIds?(dir: string): Promise<string[]>;
  /** Requests the fake VMM found against its spec, in this VM's folder. */
  violations(dir: string): string[];
}

const FAKE_PROBE = { accel: 'kvm', version: /fake/, noBinary: /not installed/, needsKvm: true };

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
    probe: FAKE_PROBE,
    real: false,
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
    probe: FAKE_PROBE,
    real: false,
    violations: violationsIn,
  },
];

/**
 * Real QEMU under TCG booting the default µOS image `npm test` builds
 * (test-output/data/images), its real agent on virtio-serial. QEMU's one
 * QMP connection is the backend's, so there is no diskIds; and nothing it
 * launches breaks the QEMU schema (no spec file to check against: QEMU
 * refuses a bad argument itself and the launch fails).
 */
export const QEMU_CASE: BackendCase = {
  name: 'qemu',
  make: (log, o) =>
    createQemuBackend({ accel: 'tcg', ...(o.binary ? { binary: o.binary } : {}) }, log),
  probe: { accel: 'tcg', version: /QEMU emulator version/, noBinary: /not found/, needsKvm: false },
  real: true,
  bootFiles() {
    const m = JSON.parse(readFileSync(path.join(IMAGE_DIR, 'manifest.json'), 'utf8')) as Manifest;
    const f = bootFiles(IMAGE_DIR, m);
    return { kernel: f.kernel, initrd: f.initrd, disk: f.disk, cmdline: m.cmdline };
  },
  unplugMs: 120_000,
  suiteTimeoutMs: 20 * 60_000,
  violations: () => [],
};
