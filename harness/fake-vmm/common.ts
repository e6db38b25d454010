/**
 * What the two fake VMMs share: the REST server on the API socket, which
 * checks every request against the official spec (spec-check.ts) before the
 * fake's own state machine sees it; the fake guest (console output, the real
 * agent core as a child process, pause as SIGSTOP); and the hybrid vsock's
 * host-initiated direction on the VMM's own uds (`CONNECT <port>\n` →
 * `OK <port>\n`), for which the fake guest listens on ECHO_PORT.
 *
 * A spec violation is answered 400 and appended as a JSON line to
 * `spec-violations.jsonl` in the fake's working directory (the VM's folder):
 * the tests read it and fail on any line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { elfKernelProblem } from '../../images/vmlinux.js';
import type { SpecChecker } from './spec-check.js';

export const VIOLATIONS_FILE = 'spec-violations.jsonl';
/** A port the fake guest listens on (vsock, host-initiated): it echoes. */
export const ECHO_PORT = 7000;

export interface Reply {
  status: number;
  body?: unknown;
}

export type Handler = (method: string, path: string, body: unknown) => Reply | Promise<Reply>;

export function serveApi(
  socketPath: string,
  spec: SpecChecker,
  handle: Handler,
  fault: (message: string) => unknown,
): Promise<http.Server> {
  rmSync(socketPath, { force: true });
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const send = (r: Reply) => {
        const text = r.body === undefined ? '' : JSON.stringify(r.body);
        res.writeHead(r.status, text ? { 'Content-Type': 'application/json' } : {});
        res.end(text);
      };
      const method = req.method ?? '';
      const url = req.url ?? '';
      const raw = Buffer.concat(chunks).toString('utf8');
      let body: unknown;
      if (raw !== '') {
        try {
          body = JSON.parse(raw) as unknown;
        } catch {
          return send(violation(method, url, 'the body is not JSON', fault));
        }
      }
      const problem = spec.check(method, url, body);
      if (problem) return send(violation(method, url, problem, fault));
      Promise.resolve()
        .then(() => handle(method, url.split('?')[0]!, body))
        .then(send, (err: Error) => send({ status: 500, body: fault(err.message) }));
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve(server));
  });
}

function violation(
  method: string,
  url: string,
  problem: string,
  fault: (m: string) => unknown,
): Reply {
  appendFileSync(VIOLATIONS_FILE, `${JSON.stringify({ method, url, problem })}\n`);
  process.stderr.write(`fake VMM: spec violation: ${problem}\n`);
  return { status: 400, body: fault(`spec violation: ${problem}`) };
}

/** `key=value` words of a kernel command line. */
export function cmdlineArgs(cmdline: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const w of cmdline.trim().split(/\s+/)) {
    const eq = w.indexOf('=');
    if (eq > 0) out.set(w.slice(0, eq), w.slice(eq + 1));
  }
  return out;
}

/** A file the VMM must open, relative to its working directory as the real ones resolve it. */
export function mustExist(file: string | undefined, what: string): void {
  if (!file || !existsSync(path.resolve(file)))
    throw new Error(`${what} ${file ?? '(none)'} does not exist`);
}

/**
 * The real VMMs load an x86-64 ELF kernel through its PVH entry (Firecracker's
 * boot-source, cloud-hypervisor's payload.kernel) and refuse a bzImage.
 */
export function mustBeElfKernel(file: string | undefined): void {
  mustExist(file, 'kernel');
  const problem = elfKernelProblem(path.resolve(file!));
  if (problem) throw new Error(`kernel ${file}: ${problem}`);
}

const AGENT_CHILD = fileURLToPath(new URL('./agent-child.ts', import.meta.url));
const TSX = import.meta.resolve('tsx');

export interface FakeGuest {
  /** The guest's console output (kernel lines, then echoes of what is typed). */
  readonly running: boolean;
  boot(): void;
  pause(): void;
  resume(): void;
  /** Guest gone (power off, VMM exit, reset). */
  kill(): void;
  /** Console input from the host: the fake echoes it as a serial getty would. */
  input(bytes: Buffer): void;
}

/**
 * The fake guest: boots by printing a kernel banner to its console and
 * starting the real agent core (only on the vsock channel: the TCP channel
 * needs the guest's network, which a fake does not have).
 */
export function createFakeGuest(o: {
  cmdline: string;
  /** The vsock device's uds (relative to the cwd), or null without a vsock device. */
  vsockUds: string | null;
  console: (text: string | Buffer) => void;
  onPower: (action: 'poweroff' | 'reboot') => void;
}): FakeGuest {
  const args = cmdlineArgs(o.cmdline);
  let child: ChildProcess | null = null;
  let running = false;
  let paused = false;
  const stopChild = () => {
    if (!child) return;
    child.removeAllListeners('message');
    // SIGKILL: a guest that is gone does not get to say goodbye (its jobs die with the agent's IPC).
    if (paused) child.kill('SIGCONT');
    child.kill('SIGKILL');
    child = null;
  };
  return {
    get running() {
      return running;
    },
    boot() {
      running = true;
      paused = false;
      o.console(
        `[    0.000000] Linux version 6.1.0-fake-vmm\r\n[    0.010000] Command line: ${o.cmdline}\r\n`,
      );
      if (args.get('mvirt.channel') !== 'vsock' || !o.vsockUds) return;
      // setpriv --pdeathsig: the guest dies with its VMM even when the VMM is
      // killed outright while the guest is paused (SIGSTOP): a stopped child
      // never runs its own watchdog, and was seen left behind after vm.suspend.
      child = spawn(
        'setpriv',
        ['--pdeathsig', 'KILL', process.execPath, '--import', TSX, AGENT_CHILD],
        {
          stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
          env: {
            PATH: process.env.PATH ?? '/usr/bin:/bin',
            FAKE_VM: args.get('mvirt.vm') ?? 'unknown',
            FAKE_ROOT: args.get('mvirt.root') ?? 'mvirt/unknown',
            FAKE_VSOCK_PATH: path.resolve(`${o.vsockUds}_1024`),
            FAKE_CMDLINE: o.cmdline,
            FAKE_VMM_PID: String(process.pid),
          },
        },
      );
      child.on('message', (m: { power?: 'poweroff' | 'reboot' }) => {
        if (m.power) o.onPower(m.power);
      });
    },
    pause() {
      paused = true;
      child?.kill('SIGSTOP');
    },
    resume() {
      paused = false;
      child?.kill('SIGCONT');
    },
    kill() {
      running = false;
      stopChild();
    },
    input(bytes) {
      if (running && !paused) o.console(bytes);
    },
  };
}

/**
 * The VMM side of a hybrid vsock, host-initiated: the host connects to the
 * uds and writes `CONNECT <port>\n`; the VMM answers `OK <host port>\n` and
 * the stream is then the guest's. The fake guest serves ECHO_PORT only;
 * other ports are refused (the connection closes, as a real VMM does).
 */
export function serveHybridVsock(uds: string, guestUp: () => boolean): net.Server {
  rmSync(uds, { force: true });
  let nextPort = 1 << 30;
  const server = net.createServer((s) => {
    let head = '';
    const onData = (chunk: Buffer) => {
      head += chunk.toString('latin1');
      const nl = head.indexOf('\n');
      if (nl < 0) {
        if (head.length > 64) s.destroy();
        return;
      }
      s.off('data', onData);
      const m = /^CONNECT (\d+)$/.exec(head.slice(0, nl));
      if (!m || Number(m[1]) !== ECHO_PORT || !guestUp()) return void s.destroy();
      s.write(`OK ${nextPort++}\n`);
      const rest = head.slice(nl + 1);
      if (rest) s.write(Buffer.from(rest, 'latin1'));
      s.pipe(s);
    };
    s.on('data', onData);
    s.on('error', () => undefined);
  });
  server.listen(uds);
  return server;
}

/** The VMM's own exit: the guest goes with it. */
export function exitWith(guest: FakeGuest | null, code: number): never {
  guest?.kill();
  process.exit(code);
}
