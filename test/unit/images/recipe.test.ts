import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { loadRecipe, parseRecipe } from '../../../images/recipe.js';

const base = { name: 'x', kernel: { debian: 'linux-image-amd64' } };

/** Assert that `fn` throws RECIPE_INVALID whose message matches every pattern. */
async function rejects(fn: () => unknown, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(
    async () => fn(),
    (err: unknown) => {
      assert.ok(err instanceof MvirtError, `expected MvirtError, got ${String(err)}`);
      assert.equal(err.code, 'RECIPE_INVALID');
      for (const p of patterns) assert.match(err.message, p);
      return true;
    },
  );
}

describe('recipe validation', () => {
  test('a minimal recipe gets defaults', () => {
    const r = parseRecipe(base);
    assert.deepEqual(r.packages, []);
    assert.deepEqual(r.modules, []);
    assert.equal(r.agent, 'dist/agent/mvirt-agent');
    assert.equal(r.machine, 'pc');
    assert.equal(r.rootfs.compression, 'zstd');
    assert.equal(r.console, 'shell');
  });

  test('console: shell or off, nothing else', async () => {
    assert.equal(parseRecipe({ ...base, console: 'off' }).console, 'off');
    await rejects(() => parseRecipe({ ...base, console: 'bash' }), /console: /);
  });

  test('an unknown top-level field is named, with the allowed ones', async () => {
    await rejects(
      () => parseRecipe({ ...base, pakages: ['curl'] }),
      /unknown field "pakages"/,
      /allowed: name, /,
    );
  });

  test('an unknown nested field is named with its path', async () => {
    await rejects(
      () => parseRecipe({ ...base, files: [{ src: 'a', dest: '/a', owner: 'root' }] }),
      /files\[0\]: unknown field "owner"/,
    );
  });

  test('a wrong type names the field and the expected type', async () => {
    await rejects(() => parseRecipe({ ...base, packages: 'curl' }), /packages: .*expected array/);
    await rejects(() => parseRecipe({ ...base, cmdline: 42 }), /cmdline: .*expected string/);
  });

  test('exclude: absolute paths inside the guest, no "..", not the root itself', async () => {
    assert.deepEqual(parseRecipe(base).exclude, []);
    assert.deepEqual(parseRecipe({ ...base, exclude: ['/usr/lib/x/gconv'] }).exclude, [
      '/usr/lib/x/gconv',
    ]);
    await rejects(() => parseRecipe({ ...base, exclude: ['usr/lib'] }), /exclude\[0\]: /);
    await rejects(() => parseRecipe({ ...base, exclude: ['/'] }), /exclude\[0\]: /);
    await rejects(() => parseRecipe({ ...base, exclude: ['/usr/lib/'] }), /exclude\[0\]: /);
    await rejects(
      () => parseRecipe({ ...base, exclude: ['/usr/../etc'] }),
      /exclude\[0\]: must not contain "\.\."/,
    );
  });

  test('a missing field is reported as missing', async () => {
    await rejects(() => parseRecipe({ kernel: base.kernel }), /name: missing required field/);
  });

  test('a bad kernel says which forms are allowed', async () => {
    await rejects(
      () => parseRecipe({ ...base, kernel: { ubuntu: 'x' } }),
      /kernel: must be \{"debian"/,
    );
  });

  test('bad names, modes and dests are explained', async () => {
    await rejects(() => parseRecipe({ ...base, name: 'Bad Name' }), /name: must be 1-64/);
    await rejects(
      () => parseRecipe({ ...base, packages: ['Not_A_Package'] }),
      /packages\[0\]: must be a Debian package name/,
    );
    await rejects(
      () => parseRecipe({ ...base, files: [{ src: 'a', dest: 'relative', mode: '999' }] }),
      /files\[0\]\.dest: must be an absolute path/,
      /files\[0\]\.mode: must be an octal mode/,
    );
    await rejects(() => parseRecipe({ ...base, machine: 'isapc' }), /machine: /);
  });
});

describe('recipe files', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'mvirt-recipe-'));
    await writeFile(path.join(dir, 'agent'), '#!/bin/sh\n', { mode: 0o755 });
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  const write = async (name: string, json: unknown): Promise<string> => {
    const p = path.join(dir, name);
    await writeFile(p, typeof json === 'string' ? json : JSON.stringify(json));
    return p;
  };

  test('invalid JSON is reported with the file name', async () => {
    await rejects(
      async () => loadRecipe(await write('bad.json', '{ "name": ')),
      /bad\.json is not valid JSON/,
    );
  });

  test('a missing recipe file is reported', async () => {
    await rejects(() => loadRecipe(path.join(dir, 'nope.json')), /nope\.json cannot be read/);
  });

  test('a missing agent says how to build it', async () => {
    await rejects(
      async () => loadRecipe(await write('a.json', { ...base, agent: 'no/such/agent' })),
      /agent: .*no\/such\/agent does not exist/,
      /node scripts\/build\.mjs agent/,
    );
  });

  test('missing extra files are named by index', async () => {
    await rejects(
      async () =>
        loadRecipe(
          await write('f.json', {
            ...base,
            agent: path.join(dir, 'agent'),
            files: [{ src: 'missing.txt', dest: '/x' }],
          }),
          dir,
        ),
      /files\[0\]\.src: .*missing\.txt is not a file/,
    );
  });

  test('paths resolve against the given root', async () => {
    const r = await loadRecipe(
      await write('ok.json', {
        ...base,
        agent: 'agent',
        files: [{ src: 'agent', dest: '/usr/bin/a', mode: '0700' }],
      }),
      dir,
    );
    assert.equal(r.agentPath, path.join(dir, 'agent'));
    assert.deepEqual(r.fileSources, [
      { src: path.join(dir, 'agent'), dest: '/usr/bin/a', mode: 0o700 },
    ]);
    assert.equal(r.customKernelDir, null);
  });

  test('a custom kernel folder must have build.sh and takes no modules', async () => {
    await rejects(
      async () =>
        loadRecipe(
          await write('k.json', {
            ...base,
            kernel: { custom: '.' },
            agent: 'agent',
            modules: ['virtio_blk'],
          }),
          dir,
        ),
      /kernel\.custom: .* has no build\.sh/,
      /modules: the custom kernel is built without module support/,
    );
  });

  test('the default recipe is valid', async () => {
    const { DEFAULT_RECIPE } = await import('../../../images/paths.js');
    const { readFile } = await import('node:fs/promises');
    const r = parseRecipe(JSON.parse(await readFile(DEFAULT_RECIPE, 'utf8')));
    assert.equal(r.name, 'default');
    assert.equal(r.agent, 'dist/agent/mvirt-agent');
  });
});
