/**
 * A real Mosquitto (Debian's `mosquitto`) for fleet tests: the shipped
 * docs/fleet/mosquitto.conf with its ports and paths replaced, the shipped
 * ACLs as they are, password files made with `mosquitto_passwd -b`. Hosts
 * (mvirtd --uplink) log in on `hostsPort`, controllers on `controllersPort`,
 * other brokers' bridges on `bridgesPort`; `bridgeTo` makes this one bridge
 * the whole mvirt topic space to and from another (docs/fleet.md).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { makeTempDir, removeDir, REPO } from './paths.js';

export const MOSQUITTO_DOCS = path.join(REPO, 'docs/fleet');

export function hasMosquitto(): boolean {
  try {
    execFileSync('mosquitto', ['-h'], { stdio: 'ignore' });
  } catch (err) {
    // `mosquitto -h` exits 3 after printing its usage; only ENOENT means absent.
    return (err as NodeJS.ErrnoException).code !== 'ENOENT';
  }
  return true;
}

/** A port nothing listens on now (Mosquitto cannot bind port 0 and tell us). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface MosquittoBroker {
  hostsPort: number;
  controllersPort: number;
  bridgesPort: number;
  /** mosquitto's stderr so far. */
  logs: string[];
  /** SIGTERM and wait for the exit (retained messages are lost: persistence is off). */
  stop(): Promise<void>;
  /** Start again on the same ports, with the same users. */
  restart(): Promise<void>;
  /** The running mosquitto's pid (for CPU figures). */
  pid(): number;
  /** stop() and remove the temp folder. */
  close(): Promise<void>;
}

function passwd(file: string, users: Record<string, string>): void {
  writeFileSync(file, '', { mode: 0o600 });
  for (const [u, p] of Object.entries(users))
    execFileSync('mosquitto_passwd', ['-b', file, u, p], { stdio: 'ignore' });
}

export async function startMosquitto(o: {
  hosts: Record<string, string>;
  controllers: Record<string, string>;
  /** Other brokers' bridge users. */
  bridges?: Record<string, string>;
  /** Bridge to this broker's bridges listener as this user. */
  bridgeTo?: { port: number; username: string; password: string };
  /** TLS on the hosts' listener (PEM files), as docs/fleet/mosquitto.conf says to add. */
  hostsTls?: { cert: string; key: string };
}): Promise<MosquittoBroker> {
  const dir = await makeTempDir('mvirt-mosquitto-');
  passwd(path.join(dir, 'hosts.passwd'), o.hosts);
  passwd(path.join(dir, 'controllers.passwd'), o.controllers);
  passwd(path.join(dir, 'bridges.passwd'), o.bridges ?? {});
  const hostsPort = await freePort();
  const controllersPort = await freePort();
  const bridgesPort = await freePort();
  const conf = readFileSync(path.join(MOSQUITTO_DOCS, 'mosquitto.conf'), 'utf8')
    .replace(
      'listener 8883',
      `listener ${hostsPort} 127.0.0.1${o.hostsTls ? `\ncertfile ${o.hostsTls.cert}\nkeyfile ${o.hostsTls.key}` : ''}`,
    )
    .replace('listener 8884', `listener ${controllersPort} 127.0.0.1`)
    .replace('listener 8885', `listener ${bridgesPort} 127.0.0.1`)
    .replaceAll('/etc/mosquitto/mvirt/hosts.passwd', path.join(dir, 'hosts.passwd'))
    .replaceAll('/etc/mosquitto/mvirt/controllers.passwd', path.join(dir, 'controllers.passwd'))
    .replaceAll('/etc/mosquitto/mvirt/bridges.passwd', path.join(dir, 'bridges.passwd'))
    .replaceAll('/etc/mosquitto/mvirt/', `${MOSQUITTO_DOCS}/`);
  // As root Mosquitto would drop to the `mosquitto` user, which cannot read the temp folder.
  const extra = process.getuid?.() === 0 ? 'user root\n' : '';
  // As in docs/fleet.md, "A Mosquitto pair, bridged"; last: the lines after
  // `connection` are that bridge's.
  const bridge = !o.bridgeTo
    ? ''
    : [
        `connection mvirt-bridge-${bridgesPort}`,
        `address 127.0.0.1:${o.bridgeTo.port}`,
        `remote_username ${o.bridgeTo.username}`,
        `remote_password ${o.bridgeTo.password}`,
        'bridge_protocol_version mqttv311',
        'try_private true',
        'cleansession false',
        'notifications true',
        'restart_timeout 1',
        'topic mvirt/# both 1',
        '',
      ].join('\n');
  writeFileSync(
    path.join(dir, 'mosquitto.conf'),
    `${conf}\n${extra}log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\npersistence false\n${bridge}`,
  );
  const logs: string[] = [];
  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();

  async function start(): Promise<void> {
    const c = spawn('mosquitto', ['-c', path.join(dir, 'mosquitto.conf')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child = c;
    exited = new Promise((resolve) => c.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      c.stderr!.on('data', (b: Buffer) => {
        buf += b.toString();
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          logs.push(line);
          // Printed once every listener is open.
          if (/mosquitto version \S+ running/.test(line)) {
            clearTimeout(t);
            resolve();
          }
        }
      });
      void exited.then(() => reject(new Error(`mosquitto exited:\n${logs.join('\n')}`)));
      const t = setTimeout(() => {
        c.kill('SIGKILL');
        reject(new Error(`mosquitto not running within 10 s:\n${logs.join('\n')}`));
      }, 10_000);
      t.unref();
    });
  }

  async function stop(): Promise<void> {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  }

  await start();
  return {
    hostsPort,
    controllersPort,
    bridgesPort,
    logs,
    stop,
    restart: start,
    pid: () => child!.pid!,
    async close() {
      await stop();
      await removeDir(dir);
    },
  };
}
