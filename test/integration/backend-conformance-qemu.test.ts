/**
 * The backend conformance suite (test/support/backend-conformance.ts) against
 * real QEMU under TCG: the default µOS image boots with its real agent, which
 * dials home on virtio-serial; pause, reboot, hot-plug, a saved state resumed
 * in a new process, re-attach after the daemon is gone and the death of the
 * process, with the same assertions the fake cloud-hypervisor and Firecracker
 * meet (test/unit/hypervisors/backend-conformance.test.ts).
 */
import { QEMU_CASE } from '../support/backend-cases.js';
import { backendConformance } from '../support/backend-conformance.js';

backendConformance(QEMU_CASE);
