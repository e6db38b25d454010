import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { duration, keyValues, mib, relativeTime, table } from '../../../host/cli/output.js';

describe('output formatting', () => {
  it('aligns table columns with two spaces and no trailing blanks', () => {
    const t = table(
      ['name', 'vcpus', 'state'],
      [
        ['web-1', '2', 'ready'],
        ['a-much-longer-name', '16', 'stopped'],
      ],
      ['left', 'right'],
    );
    assert.equal(
      t,
      [
        'NAME                VCPUS  STATE',
        'web-1                   2  ready',
        'a-much-longer-name     16  stopped',
        '',
      ].join('\n'),
    );
    for (const line of t.split('\n')) assert.equal(line, line.trimEnd());
  });

  it('counts code points, not UTF-16 units or bytes', () => {
    const t = table(
      ['a', 'b'],
      [
        ['µOS', 'x'],
        ['abcd', 'y'],
      ],
    );
    assert.equal(t.split('\n')[1], 'µOS   x');
  });

  it('aligns key/value blocks and drops missing values', () => {
    assert.equal(
      keyValues([
        ['Name', 'web-1'],
        ['IP', undefined],
        ['Memory', '256 MiB'],
      ]),
      'Name:    web-1\nMemory:  256 MiB\n',
    );
  });

  it('says times relative to now', () => {
    const now = Date.parse('2024-05-10T12:00:00Z');
    assert.equal(relativeTime('2024-05-10T12:00:00Z', now), 'just now');
    assert.equal(relativeTime('2024-05-10T11:59:48Z', now), '12s ago');
    assert.equal(relativeTime('2024-05-10T11:55:00Z', now), '5m ago');
    assert.equal(relativeTime('2024-05-10T09:00:00Z', now), '3h ago');
    assert.equal(relativeTime('2024-05-08T12:00:00Z', now), '2d ago');
    assert.equal(relativeTime('2024-05-10T12:05:00Z', now), 'in 5m');
    assert.equal(relativeTime('2024-01-01T00:00:00Z', now), '2024-01-01');
    assert.equal(relativeTime(undefined, now), '-');
    assert.equal(relativeTime('garbage', now), 'garbage');
  });

  it('formats durations and sizes', () => {
    assert.equal(duration(850), '850 ms');
    assert.equal(duration(4321), '4.3 s');
    assert.equal(duration(125_000), '2m05s');
    assert.equal(mib(256), '256 MiB');
    assert.equal(mib(2048), '2 GiB');
    assert.equal(mib(1536), '1.5 GiB');
  });
});
