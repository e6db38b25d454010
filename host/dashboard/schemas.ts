/**
 * The protocol schemas the page validates with (and zod with them): loaded as
 * their own chunk, in parallel with connecting, because evaluating zod is the
 * largest part of the page's start-up and the VM table does not need it.
 */
export { DashboardSession } from '../../protocol/http.js';
export { VmTelemetry } from '../../protocol/metrics.js';
export { ImageRecord } from '../../protocol/image.js';
export {
  HostStatus,
  JobRecord,
  OutputChunk,
  SnapshotRecord,
  VmEvent,
  VmRecord,
} from '../../protocol/records.js';
