/**
 * The per-boot seed disk: an ISO 9660 volume labelled `cidata` (cloud-init's
 * NoCloud data source) made by genisoimage. It carries `meta-data`,
 * `user-data`, optionally `network-config`, and, for an agent that dials over
 * the network, `mvirt/token`. The disk is rebuilt at every boot (the token is
 * per boot) and attached read-only; the folder it lives in is 0700.
 */
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { SeedDocs } from '../store/network.js';
import { execRunner, type Runner } from './iproute.js';

export const SEED_FILE = 'seed.iso';
export const SEED_LABEL = 'cidata';
export const SEED_TOKEN_PATH = 'mvirt/token';

export interface SeedInput {
  vmId: string;
  /** For the default meta-data's local-hostname. */
  hostname: string;
  docs: SeedDocs;
  token?: string;
}

/** meta-data when the VM has none: cloud-init requires an instance-id. */
export const defaultMetaData = (vmId: string, hostname: string): string =>
  `instance-id: ${vmId}\nlocal-hostname: ${hostname}\n`;

/** Write `<dir>/seed.iso`; returns its path. */
export async function writeSeed(
  dir: string,
  s: SeedInput,
  run: Runner = execRunner,
): Promise<string> {
  const staging = path.join(dir, 'seed.d');
  const iso = path.join(dir, SEED_FILE);
  await rm(staging, { recursive: true, force: true });
  await mkdir(path.join(staging, 'mvirt'), { recursive: true, mode: 0o700 });
  const files: [string, string][] = [
    ['meta-data', s.docs.metaData ?? defaultMetaData(s.vmId, s.hostname)],
    ['user-data', s.docs.userData ?? ''],
  ];
  if (s.docs.networkConfig !== undefined) files.push(['network-config', s.docs.networkConfig]);
  if (s.token !== undefined) files.push([SEED_TOKEN_PATH, s.token]);
  try {
    for (const [name, text] of files)
      await writeFile(path.join(staging, name), text, { mode: 0o600 });
    await rm(iso, { force: true });
    await run('genisoimage', [
      '-quiet',
      '-output',
      iso,
      '-volid',
      SEED_LABEL,
      // Rock Ridge keeps names such as user-data exactly; Joliet for other readers.
      '-rational-rock',
      '-joliet',
      '-graft-points',
      ...files.map(([name]) => `${name}=${path.join(staging, name)}`),
    ]);
    await chmod(iso, 0o600);
    return iso;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    throw new MvirtError(
      'BOOT_FAILED',
      e.code === 'ENOENT'
        ? 'genisoimage is not installed; it makes the cloud-init seed disk (Debian: apt-get install genisoimage)'
        : `cannot write the cloud-init seed: ${e.stderr || e.message}`,
      { cause: err },
    );
  } finally {
    // The token lives on in the ISO only.
    await rm(staging, { recursive: true, force: true });
  }
}
