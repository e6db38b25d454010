/**
 * One conformance suite for every hypervisor backend (test/support/backend-cases.ts):
 * lifecycle, pause/resume, reboot, hot-plug and snapshots where the backend
 * declares them (and CAPABILITY_UNSUPPORTED where it does not), the console,
 * re-attach after the daemon is gone, and the VMM's death noticed. Here the
 * cases are cloud-hypervisor and Firecracker as spec-checked fake VMMs whose
 * guest is the real agent core dialling the hybrid vsock; every request the
 * backends send is checked against the official API spec and any violation
 * fails the test (afterEach). The suite itself: test/support/backend-conformance.ts;
 * against real QEMU: test/integration/backend-conformance-qemu.test.ts.
 */
import { BACKEND_CASES } from '../../support/backend-cases.js';
import { backendConformance } from '../../support/backend-conformance.js';

for (const bc of BACKEND_CASES) backendConformance(bc);
