/**
 * Debian's chromium, headless, driven by playwright-core (never a downloaded
 * browser): a fresh profile per launch, no background traffic, removed on close.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

export const CHROMIUM = process.env.MVIRT_CHROMIUM ?? '/usr/bin/chromium';

/** `skip` option for tests that need the browser (scripts/debian-packages.txt lists it). */
export const skipNoBrowser: string | false = existsSync(CHROMIUM)
  ? false
  : `no ${CHROMIUM} (apt-get install chromium, or set MVIRT_CHROMIUM)`;

export interface Browser {
  context: BrowserContext;
  close(): Promise<void>;
}

export async function launchBrowser(
  o: {
    httpCredentials?: { username: string; password: string };
    /** More chromium flags, e.g. --ignore-certificate-errors-spki-list=<pin> for a test CA. */
    args?: string[];
  } = {},
): Promise<Browser> {
  const profile = await mkdtemp(path.join(os.tmpdir(), 'mvirt-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 900 },
    ...(o.httpCredentials ? { httpCredentials: o.httpCredentials } : {}),
    // playwright passes the profile as --user-data-dir itself.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...(o.args ?? []),
    ],
  });
  return {
    context,
    close: async () => {
      await context.close().catch(() => undefined);
      await rm(profile, { recursive: true, force: true });
    },
  };
}
