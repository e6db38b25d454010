import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  isAlive,
  parseProcStat,
  readCmdline,
  readProcStat,
} from '../../../host/hypervisors/proc.js';
import { probeBios } from '../../../host/hypervisors/qemu/probe.js';
import { toRunState } from '../../../host/hypervisors/qemu/vm.js';

describe('proc facts', () => {
  it('parses stat with spaces and parentheses in comm', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[0] = 'S'; // field 3
    fields[19] = '987654'; // field 22
    const st = parseProcStat(`4242 (qemu (x) y) ${fields.join(' ')}`);
    assert.deepEqual(st, { pid: 4242, state: 'S', startTime: 987654 });
  });

  it('reads our own process', () => {
    const st = readProcStat(process.pid);
    assert.ok(st && st.startTime > 0);
    assert.equal(isAlive(process.pid), true);
    assert.equal(isAlive(999_999_999), false);
    assert.ok(readCmdline(process.pid)?.[0]?.includes('node'));
  });
});

describe('probe firmware', () => {
  it('is 64 KiB with a far jump at the reset vector and code at offset 0', () => {
    const b = probeBios();
    assert.equal(b.length, 65536);
    assert.deepEqual([...b.subarray(0xfff0, 0xfff5)], [0xea, 0x00, 0x00, 0x00, 0xf0]); // jmp far F000:0000
    assert.equal(b[0], 0xfa); // cli
    // out 0xf4, al in the 64-bit part
    assert.ok(b.subarray(0, 0x80).includes(Buffer.from([0xe6, 0xf4])));
  });
});

describe('run states', () => {
  it('maps QMP states onto backend-neutral ones', () => {
    assert.equal(toRunState('running'), 'running');
    assert.equal(toRunState('paused'), 'paused');
    assert.equal(toRunState('prelaunch'), 'starting');
    assert.equal(toRunState('guest-panicked'), 'crashed');
    assert.equal(toRunState('shutdown'), 'shutdown');
    assert.equal(toRunState('weird'), 'unknown');
  });
});
