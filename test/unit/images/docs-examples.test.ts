/**
 * Every `mvirt run` example in the docs (and the CLI's help) runs in an image
 * that has its command: the default image has busybox and the agent's
 * libraries only, so an example with python3, make, cc, git or curl must
 * name `--image` of a shipped recipe with that package (images/recipes/) or
 * of an image the reader imported (not a recipe: its files are theirs).
 * test/integration/image-recipes.test.ts runs those commands in those images.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO } from '../../../harness/paths.js';

/** Commands the default image lacks → the Debian package a recipe must list to have them. */
const NEEDS: Record<string, string> = {
  python3: 'python3',
  python: 'python3',
  make: 'make',
  gcc: 'gcc',
  cc: 'gcc',
  git: 'git',
  curl: 'curl',
};

const recipes = new Map(
  readdirSync(path.join(REPO, 'images/recipes'))
    .filter((f) => f.endsWith('.json'))
    .map((f) => {
      const r = JSON.parse(readFileSync(path.join(REPO, 'images/recipes', f), 'utf8')) as {
        name: string;
        packages: string[];
      };
      return [r.name, new Set(r.packages)] as const;
    }),
);

interface Example {
  where: string;
  text: string;
  /** Commands of NEEDS it runs. */
  uses: string[];
}

/** The `mvirt run` examples of a text: each from `run` to the end of its line or code span. */
function examples(where: string, text: string): Example[] {
  const out: Example[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i]!;
    // A shell line continued with `\` is one command (named by its first line).
    for (let j = i + 1; line.endsWith('\\') && j < lines.length; j++)
      line = `${line.slice(0, -1)} ${lines[j]!.trim()}`;
    for (const m of line.matchAll(/\bmvirt(?:\.js)? run\b([^`]*)/g)) {
      const args = m[1]!.replace(/\s#\s.*$/, ''); // a shell comment is prose
      const sep = args.indexOf(' -- ');
      if (sep < 0) continue;
      const words = args.slice(sep + 4).match(/[A-Za-z0-9_+.-]+/g) ?? [];
      const uses = [...new Set(words.filter((w) => Object.hasOwn(NEEDS, w)))];
      if (uses.length > 0) out.push({ where: `${where}:${i + 1}`, text: m[0], uses });
    }
  }
  return out;
}

/** Why an example's command is not in its image, or null when it is. */
function problem(e: Example): string | null {
  const opts = e.text.slice(0, e.text.indexOf(' -- '));
  const image = /--image[= ]([A-Za-z0-9._-]+)/.exec(opts)?.[1];
  if (image === undefined)
    return `${e.where}: \`${e.text.trim()}\` runs ${e.uses.join(', ')} without --image: the default image has busybox only (images/recipes/python.json, build.json)`;
  const pkgs = recipes.get(image);
  if (pkgs === undefined) return null; // an imported image: its files are the reader's
  const missing = e.uses.filter((u) => !pkgs.has(NEEDS[u]!));
  return missing.length === 0
    ? null
    : `${e.where}: --image ${image} has no ${missing.join(', ')} (images/recipes/${image}.json)`;
}

/** The Markdown pages and the CLI's help (its examples are shown to users too). */
function sources(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(path.join(REPO, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (
          !e.name.startsWith('.') &&
          !/^(node_modules|dist|test-output|bench-output)$/.test(e.name)
        )
          walk(rel);
      } else if (e.name.endsWith('.md') || (dir === 'host/cli' && e.name.endsWith('.ts')))
        out.push(rel);
    }
  };
  walk('.');
  return out;
}

describe('docs examples run in an image that has their command', () => {
  it('flags a command the default image lacks, and one the named recipe lacks', () => {
    const bad = [
      ...examples('a.md', 'echo x | mvirt run -- python3 -\n'),
      ...examples('b.md', 'mvirt run --vm web-1 -- \\\n  sh -c "make test"'),
      ...examples('c.md', '`mvirt run --image python -- make test`'),
      ...examples('d.md', 'node bin/mvirt.js run --image=default -- git status # python3'),
    ];
    assert.deepEqual(
      bad.map((e) => [e.where, e.uses]),
      [
        ['a.md:1', ['python3']],
        ['b.md:1', ['make']],
        ['c.md:1', ['make']],
        ['d.md:1', ['git']],
      ],
    );
    assert.ok(bad.every((e) => problem(e) !== null));
    assert.match(problem(bad[2]!)!, /--image python has no make/);
    const good = [
      ...examples('e.md', 'mvirt run --image build --memory 512 -- make -C /tmp/p test'),
      ...examples('f.md', "mvirt run --image app -- python3 -c 'print(6*7)'"),
      ...examples('g.md', 'mvirt run -- uname -a  # make no mistake'),
    ];
    assert.deepEqual(
      good.map((e) => problem(e)),
      [null, null],
    );
  });

  it('every example in README.md, docs/ and the CLI help names such an image', () => {
    const found = sources().flatMap((f) => examples(f, readFileSync(path.join(REPO, f), 'utf8')));
    // The README's python and build examples at least: a scanner that finds nothing checks nothing.
    assert.ok(
      found.some((e) => e.where.startsWith('README.md') && e.uses.includes('python3')) &&
        found.some((e) => e.where.startsWith('README.md') && e.uses.includes('make')),
      `the README's python3 and make examples were not found: ${JSON.stringify(found)}`,
    );
    assert.deepEqual(
      found.map(problem).filter((p) => p !== null),
      [],
    );
  });
});
