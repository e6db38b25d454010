/**
 * The hostile guest of issue 12, host side: what a job in a real µOS VM needs
 * to take its agent channel over and flood mvirtd with what an agent may
 * legitimately send, sent without limit (hostile-guest.sh does it in the
 * guest, with busybox only).
 *
 * The guest has no MQTT or CBOR library, so every packet is built here, with
 * the project's own codec and the raw MQTT encoder of broker-raw.ts, checked
 * against the agent schemas (a flood the host refuses as malformed would test
 * nothing), and shipped in the job's environment as printf formats. A packet
 * that must change per message (a QoS 2 packet id, an output sequence number)
 * is split around a fixed-width counter the guest fills in.
 *
 * Kinds (each for a given number of seconds):
 *  - log:     `log` messages at level error, 4,000 characters each, QoS 1
 *  - qos2:    QoS 2 PUBLISHes of ~1 MB, never released (no PUBREL), ids 1…65535
 *  - hello:   hellos, again and again on one session
 *  - output:  `output` for a job of the VM (a `sleep` started for it), 30 KB
 *             chunks with dense sequence numbers
 *  - console: lines written to the serial console (ttyS0) as fast as it takes
 *             them; the agent is left alone
 *  - spin:    the control (no flood, see HostileKind)
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AGENT_PROTOCOL_VERSION, AGENT_UP, type Hello } from '../protocol/agent.js';
import { encodeCbor } from '../protocol/codec.js';
import { topics, type AgentUpKind } from '../protocol/topics.js';
import { encodeConnect, encodePublish } from './broker-raw.js';

export const FLOOD_KINDS = ['log', 'qos2', 'hello', 'output', 'console'] as const;
export type FloodKind = (typeof FLOOD_KINDS)[number];
/**
 * The control: the guest as busy as in the log flood (the same loop, writing
 * to /dev/null), its agent untouched, nothing sent to mvirtd. On a 2-core
 * host a flooding guest's QEMU takes a core by itself; this tells that share
 * of the other VM's latency from mvirtd's.
 */
export type HostileKind = FloodKind | 'spin';

/** The agentVersion the hostile hello claims: the host shows it while the takeover lasts. */
export const HOSTILE_AGENT_VERSION = '0.0.0-hostile';
/** The line the console flood repeats (the host looks for it on console/out). */
export const HOSTILE_CONSOLE_LINE = 'hostile console flood 0123456789abcdefghijklmnopqrstuvwxyz';
/** The guest's own report, read back with a job once the VM is usable again. */
export const HOSTILE_LOG = '/tmp/hostile.log';

const SCRIPT = readFileSync(
  path.join(path.dirname(fileURLToPath(import.meta.url)), 'hostile-guest.sh'),
  'utf8',
);

/** Bytes as a printf format: printable ASCII as is (% and \ escaped), the rest as \ooo. */
export function printfFormat(b: Uint8Array): string {
  let out = '';
  for (const x of b) {
    if (x === 0x25) out += '%%';
    else if (x === 0x5c) out += '\\\\';
    else if (x >= 0x20 && x < 0x7f) out += String.fromCharCode(x);
    else out += `\\${x.toString(8).padStart(3, '0')}`;
  }
  return out;
}

/** An agent message as the agent would send it (validated: the host must not refuse it as malformed). */
export function agentPayload(kind: AgentUpKind, msg: unknown): Buffer {
  AGENT_UP[kind].parse(msg);
  return encodeCbor(msg);
}

/** job.run's argv for hostile-guest.sh, shipped in env H_SCRIPT (the image has no copy). */
export const HOSTILE_ARGV: readonly string[] = [
  'sh',
  '-c',
  'printf %s "$H_SCRIPT" >/tmp/hostile.sh && exec sh /tmp/hostile.sh main',
];
export const HOSTILE_SCRIPT = SCRIPT;

/** The CONNECT an agent of vmId sends on its channel (no credentials: the channel is the identity). */
export const agentConnect = (vmId: string): Buffer =>
  encodeConnect({ clientId: `agent-${vmId}`, clean: true, keepalive: 30 });

/**
 * A hello as the agent sends it after CONNECT (QoS 1, packet id 1), claiming
 * HOSTILE_AGENT_VERSION so the host's VM record shows the takeover.
 */
export function hostileHello(root: string, vmId: string, jobs: Hello['jobs'] = []): Buffer {
  return encodePublish(
    topics(root).agentUp(vmId, 'hello'),
    agentPayload('hello', {
      protocol: AGENT_PROTOCOL_VERSION,
      agentVersion: HOSTILE_AGENT_VERSION,
      kernel: 'hostile',
      hostname: vmId,
      pid: 1,
      boot: { initS: 1, agentStartS: 2, connectedS: 3 },
      jobs,
    }),
    { qos: 1, messageId: 1 },
  );
}

export interface HostileJob {
  argv: string[];
  env: Record<string, string>;
  /** Bytes of one flooded packet (0 for the console). */
  packetBytes: number;
}

export interface HostileOptions {
  kind: HostileKind;
  vmId: string;
  /** `<prefix>/<hostId>` */
  root: string;
  seconds: number;
  /** output: the job of this VM whose output is flooded (listed as running in the hello). */
  targetJobId?: string;
}

/** The job that runs the flood in the VM (job.run argv and env). */
export function hostileJob(o: HostileOptions): HostileJob {
  const env: Record<string, string> = {
    H_MODE: o.kind,
    H_SECONDS: String(o.seconds),
    H_LOG: HOSTILE_LOG,
    H_SCRIPT: SCRIPT,
  };
  if (o.kind === 'console') {
    env.H_LINE = HOSTILE_CONSOLE_LINE;
  } else {
    const connect = agentConnect(o.vmId);
    // The job it floods stays the VM's (lastSeq -1: nothing to replay).
    const hello = hostileHello(
      o.root,
      o.vmId,
      o.targetJobId ? [{ jobId: o.targetJobId, state: 'running', lastSeq: -1 }] : [],
    );
    env.H_CONNECT = printfFormat(connect);
    env.H_HELLO = printfFormat(hello);
    Object.assign(env, loopPacket(o, hello));
  }
  return {
    argv: [...HOSTILE_ARGV],
    env,
    packetBytes: Number(env.H_PACKET_BYTES ?? 0),
  };
}

/** The flooded packet, as H_A + counter (H_W bytes) + H_B + H_PAYLOAD zero bytes. */
function loopPacket(o: HostileOptions, hello: Buffer): Record<string, string> {
  const t = topics(o.root);
  const split = (
    pkt: Buffer,
    counterAt: number,
    width: 0 | 2 | 4,
    zeros: number,
  ): Record<string, string> => {
    const tail = pkt.subarray(pkt.length - zeros);
    if (tail.some((b) => b !== 0)) throw new Error('the payload tail must be zeros');
    return {
      H_A: printfFormat(pkt.subarray(0, counterAt)),
      H_W: String(width),
      H_B: printfFormat(pkt.subarray(counterAt + width, pkt.length - zeros)),
      H_PAYLOAD: String(zeros),
      H_PACKET_BYTES: String(pkt.length),
    };
  };
  switch (o.kind) {
    case 'log':
    case 'spin': {
      const pkt = encodePublish(
        t.agentUp(o.vmId, 'log'),
        agentPayload('log', { level: 'error', message: `hostile ${'x'.repeat(3992)}` }),
        { qos: 1, messageId: 2 },
      );
      return { ...split(pkt, pkt.length, 0, 0), H_START: '0', H_WRAP: '0' };
    }
    case 'hello':
      return { ...split(hello, hello.length, 0, 0), H_START: '0', H_WRAP: '0' };
    case 'qos2': {
      // ~1 MB each, under the agent packet limit (1 MiB); the payload never
      // reaches the agent link (nothing is released), so zeros do.
      const topic = t.agentUp(o.vmId, 'log');
      const zeros = 1_000_000;
      const pkt = encodePublish(topic, Buffer.alloc(zeros), { qos: 2, messageId: 0xbeef });
      const at = pkt.indexOf(Buffer.from([0xbe, 0xef]), 2 + Buffer.byteLength(topic));
      return { ...split(pkt, at, 2, zeros), H_START: '1', H_WRAP: '65535' };
    }
    case 'output': {
      if (!o.targetJobId) throw new Error('an output flood needs targetJobId');
      // seq last, forced to 4 bytes (CBOR 0x1a + uint32): the guest writes the counter there.
      const payload = agentPayload('output', {
        jobId: o.targetJobId,
        stream: 'stdout',
        data: Buffer.alloc(30_000, 0x78),
        seq: 0x10000000,
      });
      if (!payload.subarray(-5).equals(Buffer.from([0x1a, 0x10, 0, 0, 0])))
        throw new Error('seq is not the last field of the output record');
      const pkt = encodePublish(t.agentUp(o.vmId, 'output'), payload, { qos: 1, messageId: 3 });
      return { ...split(pkt, pkt.length - 4, 4, 0), H_START: '0', H_WRAP: '0' };
    }
    case 'console':
      return {};
  }
}

/** What the guest reported (hostile.log): packets written and MQTT sessions begun. */
export interface HostileReport {
  tookOver: boolean;
  sent: number;
  sessions: number;
  /** Packets written by the end of each 5 s of the flood. */
  progress: number[];
  text: string;
}

export function parseHostileLog(text: string): HostileReport {
  const done = [...text.matchAll(/flood done sent=(\d+) sessions=(\d+)/g)].pop();
  return {
    tookOver: /took over /.test(text),
    sent: Number(done?.[1] ?? 0),
    sessions: Number(done?.[2] ?? 0),
    progress: [...text.matchAll(/after \d+ s: sent=(\d+)/g)].map((m) => Number(m[1])),
    text,
  };
}
