import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { moduleName, parseModuleIndex, resolveModules } from '../../../images/modules.js';

// A trimmed modules.dep in depmod's format (each line lists all transitive deps).
const DEP = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/squashfs/squashfs.ko:
`;
const BUILTIN = 'kernel/drivers/char/hw_random/rng-core.ko\n';

describe('module dependency resolution', () => {
  const idx = parseModuleIndex(DEP, BUILTIN);

  test('names are normalised (dashes, suffixes, paths)', () => {
    assert.equal(moduleName('virtio-rng'), 'virtio_rng');
    assert.equal(moduleName('kernel/x/virtio_blk.ko.xz'), 'virtio_blk');
  });

  test('dependencies come before the modules that need them', () => {
    const { order } = resolveModules(['virtio_blk', 'virtio_pci'], idx);
    const pos = (m: string): number => order.findIndex((p) => p.endsWith(`/${m}.ko`));
    assert.deepEqual(
      order.map((p) => moduleName(p)),
      ['virtio_ring', 'virtio', 'virtio_blk', 'virtio_pci_modern_dev', 'virtio_pci'],
    );
    assert.ok(pos('virtio_ring') < pos('virtio') && pos('virtio') < pos('virtio_pci'));
  });

  test('each module appears once', () => {
    const { order } = resolveModules(['virtio_blk', 'virtio-rng', 'virtio_blk', 'squashfs'], idx);
    assert.equal(new Set(order).size, order.length);
    assert.equal(order.length, 5);
  });

  test('built-in modules are reported, not loaded', () => {
    const r = resolveModules(['rng-core', 'squashfs'], idx);
    assert.deepEqual(r.builtin, ['rng_core']);
    assert.deepEqual(r.order, ['kernel/fs/squashfs/squashfs.ko']);
  });

  test('an unknown module is a recipe error naming it', () => {
    assert.throws(
      () => resolveModules(['virtio_gpu'], idx, 'kernel 6.1.0-test'),
      (e: unknown) =>
        e instanceof MvirtError &&
        e.code === 'RECIPE_INVALID' &&
        /"virtio_gpu" is not a module of kernel 6\.1\.0-test/.test(e.message),
    );
  });

  test('a cycle in modules.dep is detected', () => {
    const cyc = parseModuleIndex('a.ko: b.ko\nb.ko: a.ko\n');
    assert.throws(() => resolveModules(['a'], cyc), /cycle/);
  });
});
