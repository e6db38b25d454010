import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { byName, duration, keyValues, mib, relativeTime, table } from '../../../host/cli/output.js';

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

  it("sorts names as the root collation's localeCompare does, whatever the locale", () => {
    const chars = 'aAbBzZ09_-.';
    let seed = 1;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const name = (): string =>
      Array.from({ length: 1 + next(5) }, () => chars[next(chars.length)]!).join('');
    for (let i = 0; i < 20000; i++) {
      const a = name();
      const b = name();
      assert.equal(Math.sign(byName(a, b)), Math.sign(a.localeCompare(b, 'en')), `${a} ${b}`);
    }
    assert.deepEqual(['web', 'Api', 'api', 'db-2', 'db_1', 'db.3', 'db10', 'db1'].sort(byName), [
      'api',
      'Api',
      'db_1',
      'db-2',
      'db.3',
      'db1',
      'db10',
      'web',
    ]);
  });
});
