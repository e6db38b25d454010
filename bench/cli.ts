/**
 * CLI start (issue 18 item 3): `mvirt vm ls` against a running mvirtd, as a
 * user runs it (`node bin/mvirt.js`, the built bundle, in its own process,
 * mvirtd's unix socket, no --host so the host is discovered), wall time ÷
 * `node -e 0` (Node's own start) ≤ 2. Both are medians of runs interleaved
 * round by round, so a busy moment of the machine weighs on both. Recorded
 * beside it: `mvirt --help` (no daemon) and `vm ls` with --host.
 *
 * mvirtd is the shipped bundle (bin/mvirtd.js) on the real backends: `vm ls`
 * boots nothing, its VMs are defined only (a placeholder image is enough).
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { ensureBuilt } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { HOST_ID, spawnDaemon, stopProcess, writeFakeImage } from '../harness/daemon.js';
import { makeTempDir, removeDir, REPO } from '../harness/paths.js';
import { median, ok, round, stealTicks, type BenchRow } from './lib.js';

const ROUNDS = 21;
const WARMUP = 3;
const VMS = 10;

/** One run's wall time in ms, from spawn to exit; a failed run throws with its output. */
function timed(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  const child = spawn(process.execPath, args, {
    cwd: REPO,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => {
      const ms = performance.now() - t0;
      if (code === 0) resolve(ms);
      else reject(new Error(`node ${args.join(' ')} exited ${code}:\n${out}`));
    });
  });
}

export default async function cliBench(): Promise<BenchRow[]> {
  ensureBuilt({ always: true });
  const dataDir = await makeTempDir('mvirt-bench-cli-');
  await writeFakeImage(path.join(dataDir, 'images'));
  const d = await spawnDaemon(['--data-dir', dataDir, '--listen', 'off', '--http', 'off'], {
    bundle: 'dist',
  });
  const scratch = await makeTempDir('mvirt-bench-cli-home-');
  try {
    const c = await rpcClient(d);
    for (let i = 0; i < VMS; i++) ok(await c.call('vm.create', { name: `cli-${i}` }));
    await c.mqtt.endAsync();
    // A user's shell: the socket named, nothing else set; no saved credential.
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      MVIRT_BROKER: `unix://${d.socket!}`,
      MVIRT_HOST: '',
      MVIRT_PREFIX: '',
      MVIRT_CREDENTIALS: path.join(scratch, 'no-credentials.json'),
      XDG_CACHE_HOME: path.join(scratch, 'cache'),
    };
    const mvirt = path.join(REPO, 'bin/mvirt.js');
    const runs = {
      node: () => timed(['-e', '0'], env),
      help: () => timed([mvirt, '--help'], env),
      ls: () => timed([mvirt, 'vm', 'ls'], env),
      lsHost: () => timed([mvirt, '--host', HOST_ID, 'vm', 'ls'], env),
    };
    const ms: Record<keyof typeof runs, number[]> = { node: [], help: [], ls: [], lsHost: [] };
    const t0 = stealTicks();
    for (let i = 0; i < WARMUP + ROUNDS; i++)
      for (const k of Object.keys(runs) as (keyof typeof runs)[]) {
        const t = await runs[k]();
        if (i >= WARMUP) ms[k].push(t);
      }
    const t1 = stealTicks();
    const steal = (100 * (t1.steal - t0.steal)) / Math.max(1, t1.total - t0.total);
    const node = median(ms.node);
    const ls = median(ms.ls);
    const help = median(ms.help);
    const note = (xs: number[]) => `min ${round(Math.min(...xs), 1)} ms`;
    return [
      { name: 'node -e 0', value: round(node, 1), unit: 'ms', note: note(ms.node) },
      {
        name: 'mvirt --help',
        value: round(help, 1),
        unit: 'ms',
        note: `${note(ms.help)}; ${round(help / node, 2)} × node -e 0`,
      },
      {
        name: `mvirt vm ls (${VMS} VMs, unix socket, host discovered)`,
        value: round(ls, 1),
        unit: 'ms',
        note: note(ms.ls),
      },
      {
        name: 'mvirt vm ls --host',
        value: round(median(ms.lsHost), 1),
        unit: 'ms',
        note: note(ms.lsHost),
      },
      {
        name: 'mvirt vm ls ÷ node -e 0',
        value: round(ls / node, 2),
        unit: 'ratio',
        ratio: ls / node,
        target: '<= 2',
        note: `medians of ${ROUNDS} interleaved runs; steal ${round(steal, 1)}%`,
      },
    ];
  } finally {
    await stopProcess(d);
    await removeDir(dataDir);
    await removeDir(scratch);
  }
}
