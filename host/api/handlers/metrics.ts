/** metrics.query: roll-ups of a VM's telemetry, or of the host's own figures. */
import { HOST_OBJECT } from '../../../protocol/metrics.js';
import type { Rollups } from '../../metrics/rollup.js';
import type { VmManager } from '../../vm/manager.js';
import { toMs } from '../time.js';
import type { Handlers } from '../types.js';

const VM_ID = /^vm-[0-9a-f]{12}$/;

export interface MetricsHandlerDeps {
  rollups: Pick<Rollups, 'query'>;
  vms: Pick<VmManager, 'get' | 'resolveId'>;
}

export const metricsHandlers = ({
  rollups,
  vms,
}: MetricsHandlerDeps): Handlers<'metrics.query'> => ({
  'metrics.query': (p) => {
    // A deleted VM (an ephemeral job VM, say) keeps its history until it ages
    // out: its id still finds it; its name does not (names are reused).
    const objectId =
      p.vm === undefined
        ? HOST_OBJECT
        : (vms.resolveId(p.vm) ?? (VM_ID.test(p.vm) ? p.vm : vms.get(p.vm).id));
    return rollups.query({
      objectId,
      fromMs: toMs(p.from, 'from'),
      toMs: toMs(p.to, 'to') ?? Date.now(),
      ...(p.step !== undefined ? { stepS: p.step } : {}),
    });
  },
});
