/**
 * The dashboard in a real browser (Debian's chromium, headless) against mvirtd
 * driving a real QEMU microVM: the page shows the VM, its start button boots
 * it, the page sees it become ready, draws its boot timeline and a memory
 * chart that grows with live telemetry, its volume (attached at boot) with
 * the guest's name, size, mount and usage for it once a job mounts it, and
 * its stop button stops it. Every one of those comes over MQTT on the page's
 * WebSocket; the test only looks (the mount is a job the test runs).
 * Screenshots go to test-output/.
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, test } from 'node:test';
import { launchBrowser, skipNoBrowser, type Browser } from '../../harness/browser.js';
import { REPO } from '../../harness/paths.js';
import { BOOT_MS, explained, ok, qemuDaemon, skipNoImage, tempDataDir } from '../support/qemu.js';
import { diskJob, FIND_DISK } from '../support/disks.js';

const SHOTS = path.join(REPO, 'test-output');
/** What the page-side function reads (tests are type-checked without DOM types). */
type PageGlobals = {
  document: { querySelector(sel: string): { getAttribute(name: string): string | null } | null };
};
let browser: Browser | undefined;
after(async () => browser?.close());

test(
  'dashboard: start a real VM, see it ready with its boot timeline and memory chart, stop it',
  { skip: skipNoImage || skipNoBrowser, timeout: BOOT_MS + 240_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-dash-');
      const { d, c } = await qemuDaemon(dataDir, ['--telemetry-interval-ms', '1000']);
      assert.ok(d.httpUrl, 'mvirtd reports its HTTP address');
      const vol = ok(await c.call('volume.create', { name: 'dash-vol', sizeMiB: 16 }));
      const vm = ok(
        await c.call('vm.create', {
          name: 'dash-1',
          memoryMiB: 256,
          disks: [{ volume: vol.id }],
        }),
      );

      // The dashboard asks for a login (HTTP Basic): the test admin's.
      browser = await launchBrowser({ httpCredentials: d.admin! });
      const page = await browser.context.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(`${d.httpUrl}/`);
      await page.waitForSelector('#conn-status[data-state="connected"]');
      const row = page.locator(`tr.vm[data-id="${vm.id}"]`);
      await row.and(page.locator('[data-state="stopped"]')).waitFor();

      // The start button sends vm.start over the page's own MQTT connection.
      await row.locator('button[data-action="start"]').click();
      await page
        .locator(`tr.vm[data-id="${vm.id}"][data-state="ready"]`)
        .waitFor({ timeout: BOOT_MS });
      assert.equal(ok(await c.call('vm.get', { vm: vm.id })).state, 'ready');

      await row.locator('td').first().click();
      await page.locator(`#vm-detail[data-vm="${vm.id}"]`).waitFor();
      // A cold boot, no restore: one bar, the hypervisor's launch (what the
      // guest's stages leave of spawn → ready) and the agent hello's three stages.
      assert.equal(await row.getAttribute('data-restored'), null, 'a cold boot is not marked');
      assert.deepEqual(
        await page
          .locator('#boot-timeline .timeline')
          .evaluateAll((els) => els.map((e) => e.getAttribute('data-kind'))),
        ['boot'],
      );
      const stages = page.locator('#boot-timeline .seg');
      assert.deepEqual(
        await stages.evaluateAll((els) => els.map((e) => e.getAttribute('data-stage'))),
        ['launch', 'kernel', 'init', 'connect'],
      );
      const kernelS = Number(await stages.nth(1).getAttribute('data-seconds'));
      assert.ok(kernelS > 0 && kernelS < 60, `kernel stage ${kernelS} s`);

      // The memory chart updates as telemetry arrives (1 s interval): wait for
      // three more points than it had.
      const first = Number(await page.locator('#chart-mem').getAttribute('data-points'));
      // Runs in the page (a function: the page's CSP forbids evaluating a string).
      await page.waitForFunction(
        (n) =>
          Number(
            (globalThis as unknown as PageGlobals).document
              .querySelector('#chart-mem')
              ?.getAttribute('data-points'),
          ) >= n,
        first + 3,
        { timeout: 60_000 },
      );

      // The volume, from the VM record, then the guest's view of it from telemetry.
      const disk = page.locator(`#vm-disks tr.disk[data-volume="${vol.id}"]`);
      await disk.waitFor({ timeout: 10_000 });
      assert.equal(await disk.locator('td').nth(1).textContent(), 'read-write');
      const mounted = await diskJob(
        c,
        vm.id,
        `${FIND_DISK}; mke2fs -q $D && mkdir -p /mnt/d && mount $D /mnt/d && echo $D`,
        vol.id,
      );
      assert.equal(mounted.exitCode, 0, mounted.stderr);
      const dev = mounted.stdout!.trim().split('\n').pop();
      await page
        .locator(`#vm-disks tr.disk[data-volume="${vol.id}"]`, { hasText: '/mnt/d' })
        .waitFor({ timeout: 60_000 });
      const cells = await disk.locator('td').allTextContents();
      assert.deepEqual(cells.slice(0, 5), [vol.id, 'read-write', dev, '16.0 MiB', '/mnt/d']);
      assert.match(cells[5]!, /^[\d.]+ (B|KiB|MiB) of 1\d\.\d MiB$/, "the mount's usage");

      const memCell = await row.locator('td').nth(5).textContent();
      assert.match(memCell ?? '', /\d+ MiB/, 'the row shows the guest memory in use');
      await mkdir(SHOTS, { recursive: true });
      await page.screenshot({ path: path.join(SHOTS, 'dashboard-ready.png'), fullPage: true });

      await row.locator('button[data-action="stop"]').click();
      await page
        .locator(`tr.vm[data-id="${vm.id}"][data-state="stopped"]`)
        .waitFor({ timeout: 120_000 });
      assert.equal(ok(await c.call('vm.get', { vm: vm.id })).state, 'stopped');
      // The operator's stop is in the live event log the page shows.
      await page
        .locator('#events li', { hasText: `dash-1: stop` })
        .first()
        .waitFor({ timeout: 10_000 });
      await page.screenshot({ path: path.join(SHOTS, 'dashboard-stopped.png'), fullPage: true });
      assert.deepEqual(errors, [], 'no script errors on the page');
    }),
);
