// Type, lint and format checks are part of `npm test`, so CI runs them on every
// submission: one test each, failing with the tool's own report.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = (name: string) => path.join(root, 'node_modules/.bin', name);

function check(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', timeout: 600_000 });
  assert.equal(
    r.status,
    0,
    `${path.basename(cmd)} ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`,
  );
}

// Each part with its own globals (scripts/typecheck.mjs lists them).
test('typescript: tsc over every tsconfig (strict)', () =>
  check(process.execPath, ['scripts/typecheck.mjs']));
test('lint: eslint', () => check(bin('eslint'), ['.']));
test('format: prettier --check', () => check(bin('prettier'), ['--check', '.']));
