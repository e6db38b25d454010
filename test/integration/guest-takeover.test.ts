/**
 * Issue 11, a guest that takes its agent channel over gets nothing outside
 * its own subtree: in a real µOS VM under QEMU, a job stops the agent's
 * wrapper, kills the agent and speaks MQTT on its virtio-serial port itself
 * (harness/hostile-guest.sh, H_MODE=acl; the sessions are built in
 * harness/hostile-acl.ts). One session subscribes to thousands of
 * out-of-subtree filters while another VM (the victim) prints a marker;
 * then each forbidden publish (rpc, the victim's agent topics both ways, VM
 * and job state, retained ones, `$SYS`, a controller's replies) and each
 * CONNECT variant (another VM's client id, odd ids, a persistent session,
 * wills on forbidden topics, a CONNECT inside a live session) has a
 * session of its own, since a refusal ends it. Asserted:
 *  - every out-of-subtree filter got SUBACK 0x80 (and mvirtd logged each
 *    refusal), its own down/ was granted;
 *  - every forbidden publish and CONNECT variant was refused: the host closed
 *    the session, no PUBACK for the publish, CONNACK 2 or 5;
 *  - none of it was delivered: a controller subscribed to `#` and `$SYS/#`
 *    never sees the hostile marker, no retained message carries it, the
 *    daemon's own retained status and VM state are still there, no event
 *    carries it;
 *  - the hostile side received nothing but its own down/ traffic, and never
 *    the victim's marker;
 *  - the victim VM stays ready/busy throughout and its job ends with all of
 *    its output and none of the forgeries (no file the forged exec, job.run
 *    or console input would have written);
 *  - mvirtd is the same process and answers; the hostile VM's own agent comes
 *    back by itself and runs a job.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { test } from 'node:test';
import type { MqttClient } from 'mqtt';
import type { RpcClient } from '../../harness/client.js';
import { connectController, nextClientId } from '../../harness/connect.js';
import { JOB_MS, alive, startServiceVm } from '../../harness/flood.js';
import { ownAgentBack, watchStates } from '../../harness/state-watch.js';
import {
  ACL_READBACK_ARGV,
  aclJob,
  judgeSession,
  parseAclReport,
} from '../../harness/hostile-acl-job.js';
import {
  OUTSIDE_ROOT_TOPIC,
  PWNED_FILE,
  aclPlan,
  type AclTargets,
} from '../../harness/hostile-acl.js';
import { TEST_ADMIN } from '../../harness/test-admin.js';
import { TERMINAL_JOB_STATES } from '../../protocol/states.js';
import {
  BOOT_MS,
  explained,
  ok,
  onCleanup,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

/** The SUBSCRIBE session stays this long while the victim prints. */
const SUBSCRIBE_HOLD_S = 15;
/** The whole attack in the guest; the agent comes back after it whatever happened. */
const ATTACK_BOUND_S = 240;
/** The victim prints a line this often (ms), so its output flows all through the attack. */
const VICTIM_EVERY_MS = 100;
const VICTIM_STOP = '/tmp/victim.stop';

interface Seen {
  topic: string;
  payload: Buffer;
  retain: boolean;
}

/** An admin controller over TCP subscribed to `filters`, keeping everything it receives. */
async function spy(tcpUrl: string, filters: string[]) {
  const clientId = nextClientId('spy');
  const client: MqttClient = await connectController(tcpUrl, { clientId });
  const seen: Seen[] = [];
  client.on('message', (topic, payload, packet) =>
    seen.push({ topic, payload, retain: packet.retain }),
  );
  // One by one: mqtt.js rejects the whole call when a filter is refused.
  const granted = new Map<string, boolean>();
  for (const f of filters)
    granted.set(
      f,
      await client.subscribeAsync(f, { qos: 0 }).then(
        () => true,
        () => false,
      ),
    );
  return {
    clientId,
    seen,
    granted,
    /** Everything published before this was delivered (a fence to itself). */
    async fence(): Promise<void> {
      const topic = `fence/${clientId}`;
      const got = new Promise<void>((resolve) =>
        client.on('message', (t) => t === topic && resolve()),
      );
      await client.publishAsync(topic, 'fence', { qos: 1 });
      await got;
    },
    close: () => client.endAsync(),
  };
}

async function allOutput(c: RpcClient, jobId: string): Promise<string> {
  let out = '';
  let fromSeq = 0;
  for (;;) {
    const page = ok(await c.call('job.logs', { jobId, fromSeq }, { timeoutMs: 60_000 }));
    out += page.chunks.map((ch) => ch.data).join('');
    if (!page.more) return out;
    fromSeq = page.nextSeq;
  }
}

test(
  'a job that takes the agent channel over gets nothing outside its subtree',
  { skip, timeout: 900_000 },
  () =>
    explained(async () => {
      const started = performance.now();
      const secs = (): string => ((performance.now() - started) / 1000).toFixed(0);
      const dataDir = await tempDataDir('mvirt-takeover-');
      // Info, as in production; refusals are warnings.
      const { d, c } = await qemuDaemon(dataDir, ['--log-level', 'info']);
      const R = d.root;
      const states = await watchStates(d);
      onCleanup(() => states.close());
      const watch = await spy(d.tcpUrl!, ['#', '$SYS/#']);
      onCleanup(() => watch.close());
      const [victim, hostile] = await Promise.all([
        startServiceVm(c, 'victim', BOOT_MS + 10_000),
        startServiceVm(c, 'hostile', BOOT_MS + 10_000),
      ]);
      trackPid(victim.pid);
      trackPid(hostile.pid);
      console.error(`booted in ${secs()} s`);

      const victimMarker = `victim-${randomBytes(8).toString('hex')}`;
      const victimJob = ok(
        await c.call('job.run', {
          vm: victim.id,
          argv: [
            'sh',
            '-c',
            `i=0; while [ ! -e ${VICTIM_STOP} ]; do i=$((i + 1)); echo "$M $i"; usleep ${VICTIM_EVERY_MS * 1000}; done; echo "$M done $i"`,
          ],
          env: { M: victimMarker },
        }),
      ).jobId;
      await states.job(victimJob, ['running'], JOB_MS);

      const marker = `hostile-${randomBytes(8).toString('hex')}`;
      const targets: AclTargets = {
        root: R,
        hostileId: hostile.id,
        victimId: victim.id,
        victimJobId: victimJob,
        spyClientId: watch.clientId,
        admin: { username: TEST_ADMIN.username, password: TEST_ADMIN.password },
        marker,
      };
      const plan = aclPlan(targets, SUBSCRIBE_HOLD_S);
      const job = aclJob(plan, ATTACK_BOUND_S);
      const victimStatesFrom = states.vmStates(victim.id).length;
      const hostileStatesFrom = states.vmStates(hostile.id).length;
      const attackStarted = performance.now();
      const hostileJob = ok(
        await c.call('job.run', {
          vm: hostile.id,
          argv: job.argv,
          env: job.env,
          stdin: job.stdin,
          timeoutMs: (ATTACK_BOUND_S + 300) * 1000,
        }),
      ).jobId;
      // Taken over: the hostile hello lists no job, so mvirtd gives this one up.
      const rec = await states.job(hostileJob, TERMINAL_JOB_STATES, JOB_MS);
      assert.equal(rec.state, 'lost', `the attack job ended ${rec.state} (${rec.reason})`);
      await ownAgentBack(states, hostile, hostileStatesFrom, (ATTACK_BOUND_S + 120) * 1000);
      const attackS = (performance.now() - attackStarted) / 1000;

      // Its own agent runs jobs again: this one reads the attack's results back.
      const back = ok(
        await c.call(
          'job.run',
          { vm: hostile.id, argv: ACL_READBACK_ARGV, wait: true },
          { timeoutMs: JOB_MS },
        ),
      );
      assert.equal(back.state, 'succeeded', `read back: ${back.state} ${back.stderr ?? ''}`);
      assert.ok(!back.truncated, 'the read-back output was cut');
      const report = parseAclReport(back.stdout ?? '');

      // The victim ends its job; nothing forged reached its files.
      const stop = ok(
        await c.call(
          'job.run',
          { vm: victim.id, argv: ['sh', '-c', `touch ${VICTIM_STOP}; ls /tmp`], wait: true },
          { timeoutMs: JOB_MS },
        ),
      );
      assert.equal(stop.state, 'succeeded');
      const victimEnd = await states.job(victimJob, TERMINAL_JOB_STATES, JOB_MS);
      const victimOut = await allOutput(c, victimJob);

      // Retained now: what a controller subscribing to `#` is handed.
      const late = await spy(d.tcpUrl!, ['#']);
      await late.fence();
      await watch.fence();
      await late.close();
      const info = ok(await c.call('system.info', {}, { timeoutMs: 60_000 }));
      const events = ok(await c.call('events.query', { limit: 10_000 }, { timeoutMs: 60_000 }));
      const victimNow = ok(await c.call('vm.get', { vm: victim.id }));

      const logs = d.logs.flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>];
        } catch {
          return [];
        }
      });
      const hostileClient = `agent-${hostile.id}`;
      const refusedFilters = logs.filter(
        (l) => l.msg === 'subscription refused' && l.clientId === hostileClient,
      ).length;
      const sub = plan[0]!.expect;
      const wantRefused =
        sub.kind === 'subscribe'
          ? sub.packets.flatMap((p) => p.granted).filter((g) => !g).length
          : 0;

      const sessions = report.sessions;
      console.error(
        `attack: ${plan.length} sessions (${wantRefused} refused filters) in ${attackS.toFixed(0)} s, ` +
          `${sessions.filter((s) => s.closedBy === 'host').length} closed by the host; ` +
          `victim printed ${/done (\d+)/.exec(victimOut)?.[1] ?? '?'} lines; test ${secs()} s`,
      );

      const problems: string[] = [];
      if (!report.done) problems.push(`the guest did not finish the attack:\n${report.log}`);
      if (sessions.length !== plan.length)
        problems.push(`the guest reports ${sessions.length} sessions of ${plan.length}`);
      plan.forEach((p, i) => {
        const got = sessions[i];
        if (got && got.name !== p.name)
          problems.push(`session ${i + 1} is ${got.name}, not ${p.name}`);
        problems.push(
          ...judgeSession(p, got, { ownDown: `${R}/agent/${hostile.id}/down/`, victimMarker }),
        );
      });
      if (refusedFilters !== wantRefused)
        problems.push(`mvirtd logged ${refusedFilters} refused subscriptions, want ${wantRefused}`);
      for (const p of plan) {
        const e = p.expect;
        if (e.kind !== 'publish') continue;
        const logged = logs.some((l) =>
          e.refusedBy === 'acl'
            ? l.msg === 'publish refused, closing connection' &&
              l.clientId === hostileClient &&
              l.topic === e.topic
            : l.msg === 'connection dropped' && l.vmId === hostile.id,
        );
        if (!logged) problems.push(`${p.name}: mvirtd logged no refusal`);
      }

      // Nothing delivered: the spy, retained messages, events.
      for (const m of [...watch.seen, ...late.seen])
        if (m.payload.includes(marker))
          problems.push(
            `a controller received the marker on ${m.topic}${m.retain ? ' (retained)' : ''}`,
          );
      const retained = new Map(late.seen.filter((m) => m.retain).map((m) => [m.topic, m.payload]));
      for (const t of [`${R}/status`, `${R}/vm/${victim.id}/state`])
        if (!retained.get(t)?.length) problems.push(`the daemon's retained ${t} is gone`);
      if (retained.has(OUTSIDE_ROOT_TOPIC))
        problems.push('a retained message outside the root from the guest');
      if (events.events.some((e) => JSON.stringify(e).includes(marker)))
        problems.push('an event carries the marker');
      // A controller sees everything but `$` topics (they are refused to all): `#` must hold.
      if (!watch.granted.get('#')) problems.push('the spy was refused #');
      if (watch.granted.get('$SYS/#')) problems.push('$SYS/# was granted to a controller');

      // The victim: ready or busy all along, its job whole.
      const victimStates = states
        .vmStates(victim.id)
        .slice(victimStatesFrom)
        .map((v) => v.state);
      if (victimStates.some((s) => s !== 'ready' && s !== 'busy'))
        problems.push(`the victim VM went through ${victimStates.join(' → ')}`);
      if (victimNow.state !== 'ready' && victimNow.state !== 'busy')
        problems.push(`the victim VM is ${victimNow.state}`);
      if (victimEnd.state !== 'succeeded' || victimEnd.exitCode !== 0)
        problems.push(
          `the victim job ended ${victimEnd.state} (${victimEnd.reason}, exit ${victimEnd.exitCode})`,
        );
      const lines = victimOut.trimEnd().split('\n');
      const n = lines.length - 1;
      const whole =
        n > 0 &&
        lines[n] === `${victimMarker} done ${n}` &&
        lines.slice(0, n).every((l, i) => l === `${victimMarker} ${i + 1}`);
      if (!whole) problems.push(`the victim's output is not whole:\n${victimOut.slice(0, 2000)}`);
      if (n < (attackS * 1000) / VICTIM_EVERY_MS / 4)
        problems.push(`the victim printed only ${n} lines during a ${attackS.toFixed(0)} s attack`);
      if (victimOut.includes(marker))
        problems.push("the victim's output carries the hostile marker");
      if ((stop.stdout ?? '').split('\n').includes(path.basename(PWNED_FILE)))
        problems.push(`the victim has ${PWNED_FILE}: a forged command ran there`);

      // mvirtd: the process the test started (a restart would be another), answering.
      if (!alive(d.pid) || d.child.exitCode !== null || d.child.signalCode !== null)
        problems.push(`mvirtd ${d.pid} is gone`);
      if (info.hostId !== R.split('/')[1]) problems.push(`system.info answered for ${info.hostId}`);

      assert.deepEqual(problems, [], `\n${problems.join('\n')}\n--- guest log ---\n${report.log}`);
    }),
);
