import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { checkConfig, parseConfig, REQUIRED } from '../../../kernel-config/check.js';
import { KERNEL_CONFIG_DIR } from '../../../images/paths.js';

const full = Object.keys(REQUIRED)
  .map((k) => `${k}=y`)
  .join('\n');

describe('kernel config checker', () => {
  test('parses set and unset options', () => {
    const m = parseConfig('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x"\n# comment\n');
    assert.deepEqual(
      [...m],
      [
        ['CONFIG_A', 'y'],
        ['CONFIG_B', 'n'],
        ['CONFIG_C', '"x"'],
      ],
    );
  });

  test('a config with every required option passes', () => {
    assert.deepEqual(checkConfig(full), { ok: true, problems: [] });
  });

  test('missing or modular options are reported with the reason', () => {
    const cfg = full
      .replace('CONFIG_VIRTIO_BLK=y', 'CONFIG_VIRTIO_BLK=m')
      .replace('CONFIG_SQUASHFS=y\n', '');
    const r = checkConfig(cfg);
    assert.equal(r.ok, false);
    assert.ok(
      r.problems.some((p) => /CONFIG_VIRTIO_BLK is m, must be y: the read-only root disk/.test(p)),
    );
    assert.ok(r.problems.some((p) => /CONFIG_SQUASHFS is absent/.test(p)));
  });

  test('a fragment setting dropped by Kconfig is reported', () => {
    const r = checkConfig(full, ['CONFIG_EROFS_FS=y\n# CONFIG_MODULES is not set\n']);
    assert.deepEqual(r.problems, [
      'CONFIG_EROFS_FS=y requested by a fragment, got n (missing dependency?)',
    ]);
  });

  test('the fragments themselves cover every required option', async () => {
    const dir = path.join(KERNEL_CONFIG_DIR, 'fragments');
    const text = (
      await Promise.all((await readdir(dir)).sort().map((f) => readFile(path.join(dir, f), 'utf8')))
    ).join('\n');
    const frag = parseConfig(text);
    for (const k of Object.keys(REQUIRED))
      assert.equal(frag.get(k), 'y', `${k} not enabled by any fragment`);
  });
});
