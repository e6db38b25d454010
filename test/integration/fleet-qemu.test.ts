/**
 * A real microVM through the uplink (issue 16): mvirtd as a separate process
 * on Debian's Mosquitto with the shipped ACL, a controller on that broker
 * putting `job.run` into the fleet queue; the host claims it, boots an
 * ephemeral µOS VM under QEMU and the job's state and output reach the
 * controller over the broker. One boot: 20–60 s under TCG.
 */
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, test } from 'node:test';
import mqtt from 'mqtt';
import { createFleetRequester } from '../../protocol/fleet-client.js';
import type { JobRecord } from '../../protocol/rpc.js';
import { HOST_ID } from '../../harness/daemon.js';
import { hasMosquitto, startMosquitto } from '../../harness/mosquitto.js';
import { BOOT_MS, explained, qemuDaemon, skipNoImage, tempDataDir } from '../support/qemu.js';

const skip = skipNoImage || (hasMosquitto() ? false : 'mosquitto is not installed');
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

test(
  'a fleet job.run boots a real VM on the host that claimed it; state and output over the broker',
  { skip, timeout: 2 * BOOT_MS },
  () =>
    explained(async () => {
      const mq = await startMosquitto({
        hosts: { [HOST_ID]: 'pw-host' },
        controllers: { alice: 'pw-alice' },
      });
      cleanups.push(() => mq.close());
      const dataDir = await tempDataDir('mvirt-fleet-qemu-');
      const cred = path.join(dataDir, 'uplink.json');
      await writeFile(cred, JSON.stringify({ username: HOST_ID, password: 'pw-host' }));
      await chmod(cred, 0o600);
      await qemuDaemon(dataDir, [
        '--uplink',
        `mqtt://127.0.0.1:${mq.hostsPort}`,
        '--uplink-credentials',
        cred,
        '--no-templates',
        '--spares',
        '0',
        '--network',
        'none',
        // A TCG boot on a loaded machine (1.5 min seen): the job waits for its agent that long.
        '--job-agent-grace-ms',
        String(BOOT_MS),
      ]);
      const ctl = await mqtt.connectAsync(`mqtt://127.0.0.1:${mq.controllersPort}`, {
        username: 'alice',
        password: 'pw-alice',
        clientId: 'alice-real',
      });
      cleanups.push(() => ctl.endAsync(true));
      const states: JobRecord[] = [];
      let out = '';
      let done!: () => void;
      const finished = new Promise<void>((resolve) => (done = resolve));
      ctl.on('message', (topic, payload) => {
        if (topic.endsWith('/output'))
          out += (JSON.parse(payload.toString()) as { data: string }).data;
        else if (topic.endsWith('/state') && payload.length > 0) {
          const j = JSON.parse(payload.toString()) as JobRecord;
          states.push(j);
          if (['succeeded', 'failed', 'lost', 'timed_out', 'cancelled'].includes(j.state)) done();
        }
      });
      await ctl.subscribeAsync([`mvirt/${HOST_ID}/job/+/state`, `mvirt/${HOST_ID}/job/+/output`], {
        qos: 1,
      });
      const fleet = await createFleetRequester({
        mqtt: ctl,
        prefix: 'mvirt',
        clientId: 'alice-real',
      });
      cleanups.push(() => fleet.close());
      const placed = await fleet.request('job.run', { argv: ['sh', '-c', 'echo in $(uname -s)'] });
      assert.equal(placed.hostId, HOST_ID);
      await finished;
      const last = states.at(-1)!;
      assert.equal(last.jobId, placed.result.jobId);
      assert.equal(last.state, 'succeeded');
      assert.equal(out, 'in Linux\n');
      assert.ok(states.some((s) => s.state === 'running'));
    }),
);
