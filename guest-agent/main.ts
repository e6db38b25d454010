/**
 * mvirt-agent's entry. Started by the µOS init (inittab respawn). Also the
 * entry of the single executable: when the build captures a V8 startup
 * snapshot, module loading (mqtt.js, zod schemas, cbor-x) happens at build
 * time and only `main` runs at start.
 */
import v8 from 'node:v8';
import { Telemetry } from '../protocol/agent.js';
import { createAgent } from './agent.js';
import { parseIdentity } from './identity.js';
import { applySeed } from './cloud-init.js';
import { createLinuxPlatform, createLinuxSeedIo } from './platform/linux.js';
import { resolveSettings, SettingsError } from './settings.js';
import { createTelemetrySampler } from './telemetry.js';
import { AGENT_VERSION } from './version.js';

const say = (line: string) => process.stderr.write(`mvirt-agent: ${line}\n`);

/** Quick checks without a host: settings, /proc parsing, schemas. Prints JSON. */
async function selfTest(): Promise<number> {
  const platform = createLinuxPlatform();
  const out: Record<string, unknown> = { version: AGENT_VERSION, kernel: platform.uname().release };
  try {
    out.settings = resolveSettings(await platform.cmdline(), process.env);
  } catch (err) {
    out.settings = { error: (err as Error).message };
  }
  // The identity without its secrets (entropy, token).
  try {
    const raw = await platform.readIdentity();
    const r = raw && parseIdentity(raw);
    out.identity =
      r && 'identity' in r
        ? {
            generation: r.identity.generation,
            vmId: r.identity.vmId,
            hostname: r.identity.hostname,
            token: r.identity.token === undefined ? 'none' : 'set',
            net: r.identity.net,
          }
        : r;
  } catch (err) {
    out.identity = { problem: (err as Error).message };
  }
  const t = await createTelemetrySampler(platform).sample();
  out.telemetry = t;
  out.telemetryValid = Telemetry.safeParse(t).success;
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  return out.telemetryValid ? 0 : 1;
}

export async function main(args: string[]): Promise<void> {
  if (args.includes('--version')) {
    process.stdout.write(`${AGENT_VERSION}\n`);
    return;
  }
  if (args.includes('--self-test')) {
    process.exitCode = await selfTest();
    return;
  }
  const platform = createLinuxPlatform();
  let settings;
  try {
    settings = resolveSettings(await platform.cmdline(), process.env);
  } catch (err) {
    if (!(err instanceof SettingsError)) throw err;
    say(err.message);
    // init respawns us at once: wait a little so a broken command line does
    // not become a busy loop on the console.
    setTimeout(() => process.exit(2), 5000);
    return;
  }
  // The cloud-init seed first: its network config and runcmd finish before hello.
  const seed = await applySeed(createLinuxSeedIo()).catch((err: Error) => ({
    applied: [],
    warnings: [`cloud-init seed: ${err.message}`],
  }));
  const agent = createAgent(platform, settings);
  if (seed) {
    if (seed.applied.length) agent.log('info', `cloud-init: ${seed.applied.join('; ')}`);
    for (const w of seed.warnings) agent.log('warn', `cloud-init: ${w}`);
  }
  const stop = () => void agent.stop().finally(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  await agent.start();
}

// The executable passes its own path twice (argv[0] and argv[1]) like a script run.
const run = () =>
  main(process.argv.slice(2)).catch((err: Error) => {
    say(`fatal: ${err.stack ?? err.message}`);
    process.exit(1);
  });

if (v8.startupSnapshot?.isBuildingSnapshot()) v8.startupSnapshot.setDeserializeMainFunction(run);
else void run();
