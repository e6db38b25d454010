/**
 * The dashboard's restore marks in a real browser (Debian's chromium) against
 * an in-process mvirtd with fake VMs, no QEMU: the records a fork and a
 * suspend would leave (restoredFrom, restore, a suspended state, a snapshot)
 * are written through the daemon's own store and published as the daemon
 * publishes a VM's state. The page marks the fork and the suspended VM, lists
 * the snapshot with its fork, draws the fork's restore beside its source's
 * cold boot, asks for the fork's record again on its `restored` event (the
 * agent's report), and follows a snapshot's deletion from the event log.
 * The screenshot goes to test-output/.
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launchBrowser, skipNoBrowser, type Browser } from '../../../harness/browser.js';
import { result as ok, rpcClient, type RpcClient } from '../../../harness/client.js';
import { startTestDaemon, type TestDaemon } from '../../../harness/daemon.js';
import { createFakeHypervisor, killFakes } from '../../../harness/fake-vms.js';
import { REPO, removeDir } from '../../../harness/paths.js';
import { adminLogin } from '../../../harness/test-admin.js';
import type { RestoreInfo, VmRecord } from '../../../protocol/records.js';

/** What the page-side functions read (tests are type-checked without DOM types). */
type PageGlobals = { getComputedStyle(e: unknown): { backgroundColor: string } };

const SHOTS = path.join(REPO, 'test-output');
const hv = createFakeHypervisor();
let d: TestDaemon;
let c: RpcClient;
let browser: Browser | undefined;
const ids: Record<'base' | 'fork' | 'sleeper', string> = { base: '', fork: '', sleeper: '' };
const SNAP = 'snap-000000000001';
const OTHER_SNAP = 'snap-000000000002';
const FORK_RESTORE: RestoreInfo = {
  snapshot: SNAP,
  generation: 2,
  spawnToRunningMs: 700,
  readyAtMs: 1900,
};

/** Publish a VM's stored record as its retained state, as the daemon does. */
async function publish(id: string): Promise<void> {
  const rec: VmRecord = d.daemon.vms.get(id);
  await d.daemon.broker.publish(d.daemon.topics.vmState(id), JSON.stringify(rec), { retain: true });
}

function snapshot(id: string, name: string): void {
  const s = d.daemon.store.snapshots;
  const now = new Date().toISOString();
  s.insert(
    {
      id,
      name,
      sourceVm: ids.base,
      sourceName: 'base',
      image: 'default',
      imageKey: '0'.repeat(64),
      backend: 'fake',
      vcpus: 1,
      memoryMiB: 256,
      network: { mode: 'none' },
      generation: 1,
      createdBy: null,
    },
    now,
  );
  const saved = {
    backend: 'fake',
    version: '7.2.0',
    machine: 'microvm',
    memoryMiB: 256,
    vcpus: 1,
    devices: '0'.repeat(64),
    ram: 'stream' as const,
    files: { 'state.bin': 90 << 20 },
    bytes: 90 << 20,
  };
  assert.ok(s.markReady(id, saved, '0'.repeat(64)));
}

before(async () => {
  d = await startTestDaemon({ hypervisors: [hv] });
  c = await rpcClient(d);
  for (const name of ['base', 'fork', 'sleeper'] as const)
    ids[name] = ok(await c.call('vm.create', { name, memoryMiB: 256 })).id;
  const vms = d.daemon.store.vms;
  const now = new Date().toISOString();
  vms.setAgent(
    ids.base,
    { initS: 1, agentStartS: 1.8, connectedS: 3.5, readyAtMs: 4200 },
    '1',
    now,
  );
  snapshot(SNAP, 'warm');
  snapshot(OTHER_SNAP, 'spare');
  // What a fork's first start leaves: its lineage, its restore, and the
  // restored agent's hello (uptimes that go on from the snapshot's guest).
  vms.markFork(ids.fork, SNAP, now);
  vms.setRestored(ids.fork, 2, FORK_RESTORE, now);
  vms.setAgent(
    ids.fork,
    { initS: 1, agentStartS: 1.8, connectedS: 312, readyAtMs: 1900 },
    '1',
    now,
  );
  assert.ok(vms.setState(ids.sleeper, 'stopped', 'suspended', 'suspended (test)', now));
  for (const id of Object.values(ids)) await publish(id);
});

after(async () => {
  await browser?.close();
  await c?.close();
  await d?.stop();
  killFakes(hv);
  if (d) await removeDir(d.dataDir);
});

test(
  'the page marks a fork and a suspended VM, lists the snapshot, and draws the restore',
  { skip: skipNoBrowser, timeout: 60_000 },
  async () => {
    browser = await launchBrowser({ httpCredentials: adminLogin() });
    const page = await browser.context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${d.daemon.http!.url}/`);
    await page.waitForSelector('#conn-status[data-state="connected"]');

    // The fork's mark names the snapshot once snapshot.list has answered.
    const fork = page.locator(`tr.vm[data-id="${ids.fork}"]`);
    await fork.locator('.mark.fork', { hasText: 'fork of warm · gen 2' }).waitFor();
    assert.equal(await fork.getAttribute('data-restored'), 'fork');
    const base = page.locator(`tr.vm[data-id="${ids.base}"]`);
    assert.equal(await base.getAttribute('data-restored'), null, 'a cold boot is not marked');
    assert.equal(await base.locator('.mark').count(), 0);

    // suspended: its own colour (not stopped's, not paused's), and start resumes it.
    const sleeper = page.locator(`tr.vm[data-id="${ids.sleeper}"][data-state="suspended"]`);
    await sleeper.waitFor();
    const bg = (sel: string) =>
      page
        .locator(sel)
        .first()
        .evaluate(
          (e) => (globalThis as unknown as PageGlobals).getComputedStyle(e).backgroundColor,
        );
    const suspendedBg = await bg(`tr.vm[data-id="${ids.sleeper}"] .state`);
    assert.notEqual(suspendedBg, await bg(`tr.vm[data-id="${ids.base}"] .state`));
    const start = sleeper.locator('button[data-action="start"]');
    assert.equal(await start.textContent(), 'resume');
    assert.equal(await start.isEnabled(), true);

    // The snapshot table: both, the fork under the snapshot it was made from.
    const warm = page.locator(`#snapshots tr.snapshot[data-id="${SNAP}"]`);
    assert.deepEqual((await warm.locator('td').allTextContents()).slice(0, 4), [
      'warm',
      'base',
      'ready',
      '90.0 MiB',
    ]);
    assert.equal(await warm.locator('td').nth(5).textContent(), 'fork');
    assert.equal(await page.locator('#snapshots tr.snapshot').count(), 2);

    // The images table (image.list): the daemon's one image, built, used by the VMs.
    const img = page.locator('#images tr.image[data-name="default"]');
    await img.waitFor();
    assert.equal(await img.locator('td').nth(1).textContent(), 'built');
    assert.match((await img.locator('td').nth(5).textContent()) ?? '', /vm-/);

    // The fork's detail: its restore, then its source's cold boot, on one scale.
    await fork.locator('td').first().click();
    await page.locator(`#vm-detail[data-vm="${ids.fork}"]`).waitFor();
    const bars = page.locator('#boot-timeline .timeline');
    assert.deepEqual(
      await bars.evaluateAll((els) =>
        els.map((e) => [e.getAttribute('data-kind'), e.getAttribute('data-vm')]),
      ),
      [
        ['restore', ids.fork],
        ['boot', ids.base],
      ],
    );
    // Laid out once the panel is visible: wait for the browser to have done it.
    await page.waitForFunction(
      "[...document.querySelectorAll('#boot-timeline .timeline .bar')].every((e) => e.getBoundingClientRect().width > 0)",
    );
    const widths = await bars
      .locator('.bar')
      .evaluateAll((els) => els.map((e) => e.getBoundingClientRect().width));
    const ratio = widths[0]! / widths[1]!;
    assert.ok(Math.abs(ratio - 1900 / 4200) < 0.02, `bar widths ${widths.join(' / ')}`);
    const fact = (key: string) => page.locator(`#boot-timeline [data-fact="${key}"] dd`);
    assert.equal(await fact('clock').textContent(), 'not reported yet');

    // The agent's report lands in the record; the restored event makes the page ask for it.
    d.daemon.store.vms.setRestoreInfo(
      ids.fork,
      { ...FORK_RESTORE, clockStepMs: 298_000, entropyBytes: 128, previousVm: ids.base },
      new Date().toISOString(),
    );
    d.daemon.events.publishVmEvent(ids.fork, { at: new Date().toISOString(), type: 'restored' });
    await page
      .locator('#boot-timeline [data-fact="clock"] dd', { hasText: '+298.0 s' })
      .waitFor({ timeout: 10_000 });
    assert.equal(
      await fact('identity').textContent(),
      `was base (${ids.base}), now fork (${ids.fork})`,
    );

    await mkdir(SHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SHOTS, 'dashboard-restore.png'), fullPage: true });

    // A snapshot deleted through the API leaves the table by the event log.
    ok(await c.call('snapshot.delete', { snapshot: 'spare' }));
    await page
      .locator(`#snapshots tr.snapshot[data-id="${OTHER_SNAP}"]`)
      .waitFor({ state: 'detached', timeout: 10_000 });
    assert.equal(await page.locator('#snapshots tr.snapshot').count(), 1);
    assert.deepEqual(errors, [], 'no script errors on the page');
  },
);
