/**
 * `mvirt cp`'s arguments: which side is the VM, and the mistakes it names
 * before it connects (the copies themselves: test/integration/files-qemu.test.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runCli } from '../../../host/cli/run.js';
import { memoryIo } from '../../support/cli-io.js';

const noClient = () => Promise.reject(new Error('no connection in this test'));

async function cp(argv: string[]) {
  const io = memoryIo();
  const code = await runCli(['cp', ...argv], io, noClient);
  return { code, err: io.errText() };
}

test('mvirt cp names the mistakes in its arguments before connecting', async () => {
  const cases: [string[], RegExp][] = [
    [['a', 'b'], /exactly one of SRC and DST as VM:PATH/],
    [['web:/a', 'web:/b'], /exactly one of SRC and DST as VM:PATH/],
    [['./x', 'web:tmp/x'], /give the path in the VM in full/],
    [['./x', 'web:/tmp/x', '--mode', '9'], /--mode 9: octal/],
    [['./x', 'web:/tmp/x', '--owner', 'root'], /--owner root: expected UID or UID:GID/],
    [['./x'], /DST/],
  ];
  for (const [argv, want] of cases) {
    const r = await cp(argv);
    assert.equal(r.code, 2, `${argv.join(' ')}: ${r.err}`);
    assert.match(r.err, want, argv.join(' '));
  }
});

test('mvirt cp of a local file that is not there says so', async () => {
  const r = await cp(['/no/such/file', 'web:/tmp/x']);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /\/no\/such\/file: no such file or directory/);
});
