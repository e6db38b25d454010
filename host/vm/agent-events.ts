/**
 * The VM side of agent sessions and the console: a VM whose process runs gets
 * an agent session (host/agent/sessions.ts) and its serial console; what the
 * agent says moves the VM's record (hello: agent version and boot timeline;
 * ready: starting → ready; busy: ready ⇄ busy as jobs start and end). The
 * console's output goes out batched, only while someone listens (console-out.ts).
 */
import type { Hello } from '../../protocol/agent.js';
import { createConsoleOut } from './console-out.js';
import { createPanicScanner, guestPanicked } from './panic.js';
import type { VmContext } from './context.js';
import type { Live } from './live.js';
import { restorePart } from './restore.js';

export function agentPart(ctx: VmContext): Pick<VmContext, 'openAgent' | 'attachConsole'> {
  const { vms, events } = ctx;

  const restore = restorePart(ctx);
  ctx.agents.listen({ hello: onHello, ready: onReady, busy: onBusy });

  /** A VM's process runs (launched or re-attached): its agent may speak from now on. */
  function openAgent(live: Live, overNetwork: boolean): void {
    const running = live.running!;
    ctx.agents.open(live.id, {
      log: live.log,
      dir: live.dir,
      overNetwork,
      resumed: live.restoring !== undefined,
      connect: () => running.connectAgent(),
    });
  }

  async function attachConsole(live: Live): Promise<void> {
    if (!live.running || !live.hv.capabilities.console) return;
    try {
      const s = await live.running.connectConsole();
      live.console = s;
      const topic = ctx.topics.vmConsoleOut(live.id);
      const out = createConsoleOut({
        // QoS 0: a console is a live view; the console log keeps everything.
        publish: (payload) =>
          void ctx.broker.publish(topic, payload, { qos: 0 }).catch((err: unknown) => {
            live.log.warn({ err, topic }, 'publish failed');
          }),
        listening: () => ctx.listening?.(topic) ?? true,
      });
      const scan = createPanicScanner((message) => guestPanicked(ctx, live, message));
      s.on('data', (chunk: Buffer) => {
        out.push(chunk);
        scan(chunk);
      });
      s.on('error', (err) => live.log.debug({ err: String(err) }, 'console stream error'));
      s.on('close', () => {
        out.flush();
        if (live.console === s) live.console = undefined;
      });
    } catch (err) {
      // The console is a convenience: a VM without one still boots.
      live.log.warn({ err: String(err) }, 'cannot attach the serial console');
    }
  }

  function onHello(id: string, hello: Hello): void {
    const live = ctx.lives.get(id);
    if (!live) return;
    restore.onRestoredHello(live, hello);
    // A restored guest's hello carries its source's cold-boot timeline: not this start's.
    vms.setAgent(id, live.restoring ? undefined : hello.boot, hello.agentVersion, ctx.now());
    const rec = vms.get(id);
    if (rec) ctx.publishState(rec);
    // Caused by the guest: rate-limited per VM, the excess counted (events/guest-gate.ts).
    events.guest.append(id, 'hello events not recorded (rate limit)', {
      level: 'info',
      component: 'agent',
      message: `agent hello (mvirt-agent ${hello.agentVersion}, kernel ${hello.kernel})`,
      objects: [id],
      data: {
        guest: true,
        boot: hello.boot,
        agentVersion: hello.agentVersion,
        kernel: hello.kernel,
      },
    });
    events.publishVmEvent(id, { at: ctx.now(), type: 'agent.hello' });
  }

  function onReady(id: string, hello: Hello): void {
    const live = ctx.lives.get(id);
    if (!live) return;
    // A restored guest is ready with its new identity and entropy (its agent
    // applied them before this hello); the clock's step may still be running
    // (up to a few seconds: busybox sets whole seconds), restore.clockStepMs says when done.
    const r = live.restoring;
    const cur = vms.get(id);
    if (cur?.state !== 'starting') {
      // A re-hello after a channel reconnect or daemon restart: nothing changes.
      live.log.debug({ state: cur?.state }, 'agent ready again');
      return;
    }
    if (live.bootTimer) clearTimeout(live.bootTimer);
    live.bootTimer = undefined;
    if (live.launchedAt !== undefined) {
      const readyAtMs = Math.round(performance.now() - live.launchedAt);
      if (r) {
        // A restored guest's boot timeline is its source's cold boot: not this start's.
        r.info.readyAtMs = readyAtMs;
        vms.setRestoreInfo(id, r.info, ctx.now());
        live.log.info({ readyAtMs }, 'VM ready (restored)');
        // Its sync goes on with r; a later reboot of this process is a cold boot again.
        live.restoring = undefined;
      } else {
        vms.setAgent(id, { ...hello.boot, readyAtMs }, hello.agentVersion, ctx.now());
        live.log.info({ readyAtMs, boot: hello.boot }, 'VM ready');
      }
    }
    ctx.transition(id, 'ready', 'the agent is ready');
  }

  /** ready ⇄ busy as jobs start and end (also remembered across a pause). */
  function onBusy(id: string, busy: boolean): void {
    const cur = vms.get(id);
    if (!cur) return;
    if (busy && cur.state === 'ready') ctx.transition(id, 'busy', 'a job is running');
    else if (!busy && cur.state === 'busy') ctx.transition(id, 'ready', 'no job is running');
    else if (cur.state === 'paused') {
      const live = ctx.lives.get(id);
      if (live && (live.pausedFrom === 'ready' || live.pausedFrom === 'busy'))
        live.pausedFrom = busy ? 'busy' : 'ready';
    }
  }

  return { openAgent, attachConsole };
}
