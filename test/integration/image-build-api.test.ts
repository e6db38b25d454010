/**
 * image.build over the API, end to end: `mvirt image build RECIPE` (no
 * --data-dir; first with --no-cache, so it really builds even where this
 * recipe was built before) sends the recipe to mvirtd, which builds it into its own images
 * folder with the same builder as the host command; the CLI shows the
 * build's progress events as they come, the image is then listed and its
 * manifest served, the build is audited, and the same recipe again comes
 * from the output cache. Builds with the shipped agent and the pinned Debian
 * kernel and packages (cached by the earlier builds of `npm test`).
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, test } from 'node:test';
import { rpcClient } from '../../harness/client.js';
import { startTestDaemon } from '../../harness/daemon.js';
import { removeDir } from '../../harness/paths.js';
import type { ReplyEnvelope } from '../../protocol/rpc.js';
import { mvirt } from '../support/cli.js';

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

function ok<R>(r: ReplyEnvelope<R>): R {
  if (!r.ok) assert.fail(`${r.error.code}: ${r.error.message}`);
  return r.result;
}

test(
  'a recipe sent to mvirtd builds there, with its progress on the CLI, audited and cached',
  { timeout: 20 * 60_000 },
  async () => {
    const d = await startTestDaemon({});
    const c = await rpcClient(d);
    cleanups.push(async () => {
      await c.close();
      await d.stop();
      await removeDir(d.dataDir);
    });
    const recipe = JSON.parse(await readFile('images/recipes/default.json', 'utf8')) as Record<
      string,
      unknown
    >;
    const file = path.join(d.dataDir, 'api.json');
    await writeFile(file, JSON.stringify({ ...recipe, name: 'api-built' }));

    const first = await mvirt(['image', 'build', file, '--no-cache', '--json'], { daemon: d });
    assert.equal(first.code, 0, first.stderr);
    // Progress events, relayed as the steps go (the builder's own step lines).
    assert.match(first.stderr, /api-built: \[1\/\d+\] recipe/);
    assert.match(first.stderr, /api-built: \[\d+\/\d+\] root disk/);
    const built = JSON.parse(first.stdout) as { name: string };
    assert.equal(built.name, 'api-built');

    const list = ok(await c.call('image.list', {}));
    assert.ok(
      list.images.some((i) => i.name === 'api-built'),
      JSON.stringify(list),
    );
    const got = ok(await c.call('image.get', { image: 'api-built' }));
    assert.equal(got.manifest.name, 'api-built');
    assert.equal((got.manifest.kernel as { source?: string }).source, 'debian');

    const audit = ok(await c.call('events.query', { objectId: 'image:api-built', level: 'audit' }));
    assert.ok(
      audit.events.some(
        (e) => /^api-built: built \(key [0-9a-f]{16}\)$/.test(e.message) && e.actor,
      ),
      JSON.stringify(audit.events),
    );

    // Nothing new: the output cache, and the audit says so.
    const again = await mvirt(['image', 'build', file], { daemon: d });
    assert.equal(again.code, 0, again.stderr);
    const audit2 = ok(
      await c.call('events.query', { objectId: 'image:api-built', level: 'audit' }),
    );
    assert.ok(audit2.events.some((e) => /, from cache\)$/.test(e.message)));
  },
);
