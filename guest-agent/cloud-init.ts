/**
 * The cloud-init subset the µOS applies from a NoCloud seed (mounted by init
 * at /run/mvirt/seed): meta-data `local-hostname`; user-data `#cloud-config`
 * with `hostname`, `write_files` and `runcmd`, or a `#!` script; a version 2
 * `network-config` with static `ethernets` (addresses, gateway4, routes,
 * nameservers). Everything else is reported as ignored, not guessed at.
 *
 * Applied once per boot, before the agent says hello, so that a job never
 * races it (cloud-init's runcmd likewise finishes before boot-finished).
 * A full cloud image ignores all this and reads the same seed itself.
 */
import { parse } from 'yaml';

export const SEED_DIR = '/run/mvirt/seed';
/** Present once this boot's seed has been applied: an agent restart does not rerun runcmd. */
export const SEED_DONE = '/run/mvirt/seed-applied';
export const CLOUD_INIT_LOG = '/var/log/cloud-init-output.log';

/** What applying the seed needs from the OS (the Linux one is in platform/linux.ts). */
export interface SeedIo {
  readText(path: string): Promise<string | null>;
  /** Create parent folders as needed. */
  writeFile(path: string, data: Buffer, opts: { mode: number; append: boolean }): Promise<void>;
  /** Run argv with stdout/stderr appended to the log file; resolves with the exit code. */
  run(argv: readonly string[], logFile: string): Promise<number>;
}

export interface SeedReport {
  applied: string[];
  warnings: string[];
}

type Doc = Record<string, unknown>;

const isObj = (v: unknown): v is Doc => typeof v === 'object' && v !== null && !Array.isArray(v);

function parseYaml(text: string, what: string, warnings: string[]): Doc | null {
  try {
    const v: unknown = parse(text);
    if (v === null || v === undefined) return {};
    if (isObj(v)) return v;
    warnings.push(`${what}: not a mapping; ignored`);
  } catch (err) {
    warnings.push(`${what}: invalid YAML (${(err as Error).message.split('\n')[0]}); ignored`);
  }
  return null;
}

const HOSTNAME_RE = /^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/;

async function setHostname(io: SeedIo, name: unknown, r: SeedReport): Promise<void> {
  if (typeof name !== 'string' || !HOSTNAME_RE.test(name) || name.length > 253) {
    r.warnings.push(`hostname ${JSON.stringify(name)} is not a valid host name; ignored`);
    return;
  }
  const short = name.split('.')[0]!;
  if ((await io.run(['hostname', short], CLOUD_INIT_LOG)) !== 0) {
    r.warnings.push(`hostname ${short} failed`);
    return;
  }
  await io.writeFile('/etc/hostname', Buffer.from(`${short}\n`), { mode: 0o644, append: false });
  r.applied.push(`hostname ${short}`);
}

function fileContent(f: Doc, r: SeedReport, path: string): Buffer | null {
  const content = f.content ?? '';
  if (typeof content !== 'string') {
    r.warnings.push(`write_files ${path}: content must be a string; skipped`);
    return null;
  }
  const enc = typeof f.encoding === 'string' ? f.encoding.toLowerCase() : 'text/plain';
  if (['b64', 'base64'].includes(enc)) return Buffer.from(content, 'base64');
  if (['text/plain', 'text'].includes(enc)) return Buffer.from(content, 'utf8');
  r.warnings.push(`write_files ${path}: encoding ${enc} is not supported (b64 or text); skipped`);
  return null;
}

async function writeFiles(io: SeedIo, files: unknown, r: SeedReport): Promise<void> {
  if (!Array.isArray(files)) {
    r.warnings.push('write_files must be a list; ignored');
    return;
  }
  for (const f of files) {
    if (!isObj(f) || typeof f.path !== 'string' || !f.path.startsWith('/')) {
      r.warnings.push('write_files: an entry without an absolute path; skipped');
      continue;
    }
    const data = fileContent(f, r, f.path);
    if (!data) continue;
    const perm = typeof f.permissions === 'string' ? f.permissions : '0644';
    if (!/^0?[0-7]{3,4}$/.test(perm)) {
      r.warnings.push(`write_files ${f.path}: permissions ${perm} is not octal; skipped`);
      continue;
    }
    try {
      await io.writeFile(f.path, data, { mode: parseInt(perm, 8), append: f.append === true });
      r.applied.push(`write_files ${f.path}`);
    } catch (err) {
      r.warnings.push(`write_files ${f.path}: ${(err as Error).message}`);
    }
  }
}

async function runCommands(io: SeedIo, cmds: unknown, r: SeedReport): Promise<void> {
  if (!Array.isArray(cmds)) {
    r.warnings.push('runcmd must be a list; ignored');
    return;
  }
  for (const [i, c] of cmds.entries()) {
    // A string goes through sh (like cloud-init); a list is an argv.
    const argv =
      typeof c === 'string'
        ? ['/bin/sh', '-c', c]
        : Array.isArray(c) && c.length > 0 && c.every((a) => typeof a === 'string')
          ? (c as string[])
          : null;
    if (!argv) {
      r.warnings.push(`runcmd[${i}]: not a string or a list of strings; skipped`);
      continue;
    }
    const code = await io.run(argv, CLOUD_INIT_LOG);
    if (code === 0) r.applied.push(`runcmd[${i}]`);
    else r.warnings.push(`runcmd[${i}] exited with ${code} (see ${CLOUD_INIT_LOG})`);
  }
}

const SUPPORTED_CLOUD_CONFIG = new Set(['hostname', 'fqdn', 'write_files', 'runcmd']);

async function applyUserData(io: SeedIo, text: string, r: SeedReport): Promise<void> {
  if (text.trim() === '') return;
  if (text.startsWith('#!')) {
    const script = '/run/mvirt/user-data-script';
    await io.writeFile(script, Buffer.from(text), { mode: 0o700, append: false });
    const code = await io.run([script], CLOUD_INIT_LOG);
    if (code === 0) r.applied.push('user-data script');
    else r.warnings.push(`user-data script exited with ${code} (see ${CLOUD_INIT_LOG})`);
    return;
  }
  if (!text.startsWith('#cloud-config')) {
    r.warnings.push('user-data: neither #cloud-config nor a #! script; ignored');
    return;
  }
  const doc = parseYaml(text, 'user-data', r.warnings);
  if (!doc) return;
  const ignored = Object.keys(doc).filter((k) => !SUPPORTED_CLOUD_CONFIG.has(k));
  if (ignored.length) r.warnings.push(`user-data: not supported by the µOS: ${ignored.join(', ')}`);
  const name = doc.fqdn ?? doc.hostname;
  if (name !== undefined) await setHostname(io, name, r);
  if (doc.write_files !== undefined) await writeFiles(io, doc.write_files, r);
  if (doc.runcmd !== undefined) await runCommands(io, doc.runcmd, r);
}

/** network-config version 2, static subset: `ip` commands per interface. */
async function applyNetworkConfig(io: SeedIo, text: string, r: SeedReport): Promise<void> {
  const doc = parseYaml(text, 'network-config', r.warnings);
  if (!doc) return;
  const net = isObj(doc.network) ? doc.network : doc; // with or without the `network:` key
  if (net.version !== 2 || !isObj(net.ethernets)) {
    r.warnings.push('network-config: only version 2 with ethernets is supported; ignored');
    return;
  }
  const ip = async (...args: string[]) => {
    const code = await io.run(['ip', ...args], CLOUD_INIT_LOG);
    if (code !== 0) r.warnings.push(`network-config: ip ${args.join(' ')} failed (${code})`);
  };
  const dns: string[] = [];
  for (const [ifname, eth] of Object.entries(net.ethernets)) {
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(ifname) || !isObj(eth)) {
      r.warnings.push(`network-config: interface ${ifname} skipped`);
      continue;
    }
    await ip('link', 'set', 'dev', ifname, 'up');
    for (const a of Array.isArray(eth.addresses) ? eth.addresses : []) {
      if (typeof a === 'string' && /^[0-9.]+\/\d{1,2}$/.test(a))
        await ip('addr', 'replace', a, 'dev', ifname);
      else r.warnings.push(`network-config: address ${JSON.stringify(a)} skipped (IPv4 CIDR only)`);
    }
    if (typeof eth.gateway4 === 'string')
      await ip('route', 'replace', 'default', 'via', eth.gateway4, 'dev', ifname);
    for (const rt of Array.isArray(eth.routes) ? eth.routes : []) {
      if (isObj(rt) && typeof rt.to === 'string' && typeof rt.via === 'string')
        await ip('route', 'replace', rt.to === 'default' ? 'default' : rt.to, 'via', rt.via);
    }
    const ns = isObj(eth.nameservers) ? eth.nameservers.addresses : undefined;
    if (Array.isArray(ns)) dns.push(...ns.filter((x): x is string => typeof x === 'string'));
    r.applied.push(`network-config ${ifname}`);
  }
  if (dns.length) {
    const text = dns.map((d) => `nameserver ${d}\n`).join('');
    await io.writeFile('/run/resolv.conf', Buffer.from(text), { mode: 0o644, append: false });
  }
}

/**
 * Apply the seed once per boot. Nothing here throws for bad content: every
 * problem becomes a warning the agent forwards to the host's log.
 */
export async function applySeed(io: SeedIo, dir = SEED_DIR): Promise<SeedReport | null> {
  const r: SeedReport = { applied: [], warnings: [] };
  if ((await io.readText(SEED_DONE)) !== null) return null;
  const meta = await io.readText(`${dir}/meta-data`);
  if (meta === null) return null; // no seed attached
  const metaDoc = parseYaml(meta, 'meta-data', r.warnings);
  const network = await io.readText(`${dir}/network-config`);
  if (network !== null) await applyNetworkConfig(io, network, r);
  if (metaDoc?.['local-hostname'] !== undefined)
    await setHostname(io, metaDoc['local-hostname'], r);
  const user = await io.readText(`${dir}/user-data`);
  if (user !== null) await applyUserData(io, user, r);
  await io.writeFile(SEED_DONE, Buffer.from(`${JSON.stringify(r)}\n`), {
    mode: 0o600,
    append: false,
  });
  return r;
}
