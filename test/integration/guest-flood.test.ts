/**
 * Issue 12, "Contain the guest": a hostile job in a real µOS VM under QEMU
 * takes its agent channel over (harness/hostile-guest.sh) and floods
 * mvirtd — a separate process — with what an agent may send, sent without
 * limit: log lines, QoS 2 publishes never released, hellos, output for its
 * own job, and bytes on the serial console (with a controller reading it).
 * Then the output flood again while a controller subscribed to `#` stops
 * reading its socket. For each flood:
 *  - mvirtd's RSS (sampled every 200 ms) grows by at most 32 MiB;
 *  - the other VM's `/bin/true` job keeps at most 2× its latency beside the
 *    control (medians, see below), and with the stuck subscriber other
 *    controllers' system.info / vm.list replies at most 2× idle; nothing stalls meanwhile (no job or
 *    request over 5 s: the issue saw a job take 24 s while aedes waited up
 *    to 30 s for a stuck subscriber to drain);
 *  - every audit record from before is still there;
 *  - mvirtd is still up, and the flooding VM is usable again afterwards:
 *    its own agent comes back without a VM restart (init respawns it once
 *    the hostile job lets go of the port) and runs a job;
 *  - the flood really happened (the guest's count of packets written, the
 *    console subscriber's bytes), so a broken flood cannot pass, and it was
 *    throttled, never stopped: the guest wrote something in every 5 s.
 * Every flood runs to its end and the figures of all of them are printed
 * before the assertions, so one run shows what holds and what does not.
 *
 * Before the floods, a control: the flooding VM's guest as busy as in a
 * flood but sending nothing. On 2 cores under TCG its QEMU alone takes one,
 * and the other VM's job already takes ×1.2–1.6 of idle beside it: that is
 * the host's emulation, not mvirtd. So the other VM's latency is held to 2×
 * its latency beside the control (what the flood costs through mvirtd);
 * the ratio to idle is printed, and bench/flood reports it against the
 * issue's target. The control's own figures are printed, not judged.
 *
 * MVIRT_FLOOD_SECONDS sets the length of each flood; the default is the
 * issue's 30 s (seven floods of 20 s took 177 s in all on the 2-core TCG
 * host once the console stopped costing a core, so 30 s is about 4 minutes).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  describe as describeFlood,
  measureIdle,
  median,
  runFlood,
  startServiceVm,
  trueJob,
  type FloodContext,
  type FloodFigures,
} from '../../harness/flood.js';
import { watchStates } from '../../harness/state-watch.js';
import { FLOOD_KINDS } from '../../harness/hostile-guest.js';
import {
  BOOT_MS,
  explained,
  onCleanup,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const SECONDS = Number(process.env.MVIRT_FLOOD_SECONDS ?? 30);
const MAX_GROWTH_MIB = 32;
const MAX_LATENCY_RATIO = 2;
/** A job or request slower than this during a flood is a stall (idle: ~0.1 s and ~3 ms here). */
const STALL_MS = 5000;
/**
 * Packets the guest must at least have written for a flood to count (a TCG
 * guest in a shell loop). QoS 2: each session ends after a packet or two of
 * ~1 MB never released, and mvirtd makes a guest whose sessions keep ending
 * right after their hello wait up to 1 s for the next (host/agent/sessions.ts):
 * 16 packets in 17 sessions in 30 s (2026-12-08), so a flood is 8 or more.
 */
const MIN_PACKETS: Record<string, number> = { log: 200, qos2: 8, hello: 200, output: 100 };
const MIN_CONSOLE_BYTES = 64 * 1024;

test(
  'a hostile guest floods mvirtd: memory, other VMs, controllers and audit hold',
  { skip, timeout: 3_600_000 },
  () =>
    explained(async () => {
      const started = performance.now();
      const dataDir = await tempDataDir('mvirt-flood-');
      // Info, as in production: at debug mvirtd logs a line per refused guest message.
      const { d, c } = await qemuDaemon(dataDir, ['--log-level', 'info']);
      const states = await watchStates(d);
      onCleanup(() => states.close());
      const [bystander, flooder] = await Promise.all([
        startServiceVm(c, 'bystander', BOOT_MS + 10_000),
        startServiceVm(c, 'flooder', BOOT_MS + 10_000),
      ]);
      trackPid(bystander.pid);
      trackPid(flooder.pid);
      const idle = await measureIdle(c, bystander.id);
      console.error(
        `idle: /bin/true on the bystander p50 ${idle.jobMs.toFixed(0)} ms (mean ${idle.jobMeanMs.toFixed(0)}), controller request p50 ${idle.rpcMs.toFixed(1)} ms (mean ${idle.rpcMeanMs.toFixed(1)}); booted in ${((performance.now() - started) / 1000).toFixed(0)} s`,
      );
      const ctx: FloodContext = {
        c,
        d,
        states,
        bystander,
        flooder,
        idle,
        seconds: SECONDS,
        bootMs: BOOT_MS + 10_000,
      };

      const figures: FloodFigures[] = [];
      const plan = [
        // The control first: the guest as busy, nothing sent (see HostileKind).
        { kind: 'spin' as const },
        ...FLOOD_KINDS.map((kind) => ({ kind })),
        { kind: 'output' as const, stuckSubscriber: true },
      ];
      for (const p of plan) {
        const f = await runFlood(ctx, p);
        trackPid(ctx.flooder.pid);
        console.error(describeFlood(f));
        figures.push(f);
        if (!f.daemonAlive) break;
      }
      console.error(
        `guest floods: ${figures.length} floods of ${SECONDS} s in ${((performance.now() - started) / 1000).toFixed(0)} s`,
      );

      const problems: string[] = [];
      const control = figures[0]!;
      for (const f of figures) {
        const bad = (what: string): number => problems.push(`${f.name}: ${what}`);
        if (!f.daemonAlive) bad('mvirtd died');
        if (!f.usable) bad(`the flooding VM is not usable again: ${f.usableNote}`);
        if (f === control) continue;
        if (f.safetyTripped) bad('mvirtd grew past the safety valve; the flooding VM was killed');
        if (f.rssGrowthMiB > MAX_GROWTH_MIB)
          bad(
            `mvirtd RSS grew by ${f.rssGrowthMiB} MiB (${f.rssBeforeMiB} → ${f.rssPeakMiB}), limit ${MAX_GROWTH_MIB}`,
          );
        // Judged against the control: what the flood costs beyond its guest's
        // own CPU (see the header); the ratio to idle is printed and benched.
        const overControl = f.jobRatio / Math.max(1, control.jobRatio);
        if (overControl > MAX_LATENCY_RATIO)
          bad(
            `the other VM's /bin/true took ×${overControl.toFixed(2)} of its latency beside the control (×${f.jobRatio.toFixed(2)} of idle: p50 ${Math.round(median(f.jobMs))} ms of ${f.jobMs.length}, max ${Math.max(...f.jobMs)}; idle ${idle.jobMs.toFixed(0)} ms; with the guest only spinning ×${control.jobRatio.toFixed(2)})`,
          );
        const slowest = Math.max(...f.jobMs, ...f.rpcMs);
        if (slowest > STALL_MS)
          bad(`a stall: the slowest job or controller request took ${Math.round(slowest)} ms`);
        if (f.stuck && f.rpcRatio > MAX_LATENCY_RATIO)
          bad(
            `controller requests took ${f.rpcRatio.toFixed(2)}× their idle latency (median of ${f.rpcMs.length}; idle ${idle.rpcMs.toFixed(1)} ms)`,
          );
        if (f.audit.missing > 0) bad(`${f.audit.missing} of ${f.audit.before} audit records gone`);
        if (f.kind === 'console') {
          if ((f.console?.bytes ?? 0) < MIN_CONSOLE_BYTES)
            bad(`the console subscriber got only ${f.console?.bytes ?? 0} bytes: no flood`);
        } else if (f.usable && (f.guest?.sent ?? 0) < MIN_PACKETS[f.kind]!) {
          bad(
            `the guest wrote only ${f.guest?.sent ?? 0} packets: no flood\n${f.guest?.text ?? ''}`,
          );
        } else if (f.guest) {
          // Throttled, never stopped: a channel mvirtd stops reading for good
          // would wedge an honest agent just the same.
          const p = f.guest.progress;
          const stalled = p.findIndex((n, i) => n <= (i === 0 ? 0 : p[i - 1]!));
          if (stalled >= 0)
            bad(
              `the flood stopped: nothing written between ${stalled * 5} and ${stalled * 5 + 5} s (packets by each 5 s: ${p.join('/')}); mvirtd stopped reading the channel`,
            );
        }
      }
      assert.equal(figures.length, plan.length, 'every flood ran');
      assert.deepEqual(problems, [], `\n${problems.join('\n')}`);

      // Still serving, both VMs, after all of it.
      await trueJob(c, bystander.id);
      await trueJob(c, ctx.flooder.id);
    }),
);
