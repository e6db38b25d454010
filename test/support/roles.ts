/**
 * The fixture of the role tests (test/unit/api/roles.test.ts, role-scopes.test.ts):
 * the real mvirtd (fake hypervisor backend, real broker, real SQLite) with a
 * users file of every role and scope, reached with Debian's mosquitto_pub
 * and mosquitto_sub as a third-party controller would.
 */
import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before } from 'node:test';
import { promisify } from 'node:util';
import { hashPassword } from '../../host/broker/passwords.js';
import type { ReplyEnvelope } from '../../protocol/rpc.js';
import { createFakeHypervisor, killFakes } from '../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../harness/paths.js';
import { startTestDaemon, type TestDaemon } from '../../harness/daemon.js';

const run = promisify(execFile);
export const PASSWORD = 'pw';
// Cheap scrypt parameters: these tests log in a few hundred times.
const FAST = { N: 1024, r: 8, p: 1 };
export const USERS = [
  { username: 'root' }, // no role: an admin, as before roles existed
  { username: 'admin', role: 'admin' },
  { username: 'op', role: 'operator' },
  { username: 'viewer', role: 'viewer' },
  { username: 'op-a', role: 'operator', scope: 'a' },
  { username: 'op-b', role: 'operator', scope: 'b' },
  { username: 'view-a', role: 'viewer', scope: 'a' },
] as const;

export const replyNs = (clientId: string): string => `mvirt/_clients/${clientId}/replies`;

/**
 * A daemon for this test file, started before its tests and stopped after
 * them, and the mosquitto helpers that log in to it (as `user`, password
 * PASSWORD). `d` and `port` are there once the tests run.
 */
export function rolesFixture() {
  // It can save state: role-scopes.test.ts takes VM snapshots.
  const hv = createFakeHypervisor({ capabilities: { snapshots: true } });
  const fx = { d: undefined as unknown as TestDaemon, port: '' };

  before(async () => {
    const dir = await makeTempDir('mvirt-roles-');
    const file = path.join(dir, 'users.json');
    const hash = await hashPassword(PASSWORD, FAST);
    await writeFile(
      file,
      JSON.stringify({ users: USERS.map((u) => ({ ...u, passwordHash: hash })) }),
    );
    fx.d = await startTestDaemon({ hypervisors: [hv], args: ['--users', file] });
    fx.port = fx.d.daemon.broker.addresses.tcp!.split(':').pop()!;
  });
  after(async () => {
    const d = fx.d as TestDaemon | undefined;
    await d?.daemon.vms.shutdown(true).catch(() => undefined);
    await d?.stop();
    killFakes(hv);
    if (d) await removeDir(d.dataDir);
  });

  const auth = (user: string): string[] => ['-p', fx.port, '-u', user, '-P', PASSWORD, '-q', '1'];

  /** A mosquitto_sub that prints `topic payload` lines; `until` waits for a line. */
  function sub(user: string, clientId: string, filters: string[], extra: string[] = []) {
    const child: ChildProcessWithoutNullStreams = spawn('mosquitto_sub', [
      ...auth(user),
      '-i',
      clientId,
      '-v',
      ...filters.flatMap((t) => ['-t', t]),
      ...extra,
    ]);
    const lines: string[] = [];
    const waiters: Array<() => void> = [];
    let buf = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => {
      buf += b.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      lines.push(...parts);
      for (const w of waiters.splice(0)) w();
    });
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    return {
      lines,
      exited,
      stderr: () => err,
      async until(pred: (line: string) => boolean, what: string): Promise<string> {
        for (;;) {
          const hit = lines.find(pred);
          if (hit !== undefined) return hit;
          const closed = await Promise.race([
            new Promise<false>((r) => waiters.push(() => r(false))),
            exited.then(() => true),
          ]);
          if (closed && !lines.some(pred))
            throw new Error(`mosquitto_sub exited before ${what}: ${err} ${lines.join('\n')}`);
        }
      },
      stop: () => child.kill(),
    };
  }

  async function pub(user: string, topic: string, message: string, extra: string[] = []) {
    return run('mosquitto_pub', [
      ...auth(user),
      '-i',
      `${user}-pub`,
      '-t',
      topic,
      '-m',
      message,
      ...extra,
    ]);
  }

  /**
   * One reply listener per user: a mosquitto_sub on its own namespace; calls
   * go out with mosquitto_pub as the same user (another client id).
   */
  async function replies(user: string) {
    const clientId = `${user}-replies`;
    const s = sub(user, clientId, [`${replyNs(clientId)}/#`, `${fx.d.root}/status`]);
    await s.until((l) => l.startsWith(`${fx.d.root}/status `), 'the retained status (subscribed)');
    let n = 0;
    return {
      sub: s,
      async call(method: string, params?: unknown): Promise<ReplyEnvelope> {
        const id = `${user}-${++n}`;
        const replyTo = `${replyNs(clientId)}/x`;
        await pub(user, `${fx.d.root}/rpc/${method}`, JSON.stringify({ id, replyTo, params }));
        const line = await s.until((l) => l.includes(`"id":"${id}"`), `the reply to ${id}`);
        return JSON.parse(line.slice(line.indexOf(' ') + 1)) as ReplyEnvelope;
      },
    };
  }

  return Object.assign(fx, { sub, pub, replies });
}
