/**
 * One mvirtd of a test fleet as a process of its own (so a test can kill -9
 * it), its VMs fake (fake-vms.ts) with the real agent core as their guest:
 * `node --import tsx harness/fleet-host.ts --data-dir DIR [mvirtd options…]`.
 * Writes one line `{"ready": true, "url", "root"}` on stdout once it serves,
 * and appends the pid of every fake VM it launches to DIR/fake-pids (the fake
 * guests outlive a kill -9, as hypervisor processes do: the test ends them).
 * SIGTERM stops it cleanly.
 */
import { appendFileSync } from 'node:fs';
import path from 'node:path';
import { createFakeHypervisor } from './fake-vms.js';
import { startTestDaemon, testLogger } from './daemon.js';

const args = process.argv.slice(2);
const dataDir = args[args.indexOf('--data-dir') + 1];
if (!dataDir) throw new Error('fleet-host: --data-dir DIR is required');
const hv = createFakeHypervisor({ agent: 'real' });
const launch = hv.launch.bind(hv);
hv.launch = async (spec, log) => {
  const vm = await launch(spec, log);
  appendFileSync(path.join(dataDir, 'fake-pids'), `${vm.runtime.pid}\n`);
  return vm;
};
const d = await startTestDaemon({
  hypervisors: [hv],
  dataDir,
  args: args.filter(
    (_a, i) => i !== args.indexOf('--data-dir') && i !== args.indexOf('--data-dir') + 1,
  ),
  log: testLogger(),
});
process.stdout.write(`${JSON.stringify({ ready: true, url: d.url, root: d.root })}\n`);
process.once('SIGTERM', () => {
  void d.stop().then(() => process.exit(0));
});
