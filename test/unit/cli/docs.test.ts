/** The docs are generated from protocol/; these tests fail when they drift. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERROR_CODES } from '../../../protocol/errors.js';
import { RPC_METHODS } from '../../../protocol/rpc.js';
import {
  ASYNCAPI_PATH,
  ERRORS_PATH,
  asyncApiYaml,
  errorsMarkdown,
  normalizeTables,
} from '../../../host/cli/docs-gen.js';
import { COMMANDS } from '../../../host/cli/run.js';

const REGENERATE = 'regenerate with `node --import tsx host/cli/docs-gen.ts`';

describe('docs', () => {
  const errorsMd = readFileSync(ERRORS_PATH, 'utf8');
  const asyncapi = readFileSync(ASYNCAPI_PATH, 'utf8');

  it('docs/errors.md documents every code of ERROR_CODES', () => {
    for (const code of Object.keys(ERROR_CODES))
      assert.ok(errorsMd.includes(`\`${code}\``), `${code} missing: ${REGENERATE}`);
  });

  it('docs/errors.md has the current generated table', () => {
    assert.equal(
      normalizeTables(errorsMd),
      normalizeTables(errorsMarkdown(errorsMd)),
      `stale table: ${REGENERATE}`,
    );
  });

  it('docs/asyncapi.yaml has every RPC method, as a channel and an operation', () => {
    for (const m of RPC_METHODS) {
      assert.ok(asyncapi.includes(`address: "{prefix}/{hostId}/rpc/${m}"`), `channel for ${m}`);
      assert.match(
        asyncapi,
        new RegExp(`^  ${m.replace('.', '\\.')}:\\n    action: send`, 'm'),
        `operation ${m}`,
      );
    }
  });

  it('docs/asyncapi.yaml has every public topic of PROTOCOL.md', () => {
    for (const t of [
      'status',
      'events',
      'vm/{vmId}/state',
      'vm/{vmId}/events',
      'vm/{vmId}/telemetry',
      'vm/{vmId}/console/out',
      'vm/{vmId}/console/in',
      'job/{jobId}/state',
      'job/{jobId}/output',
      'pool/{pool}/state',
    ])
      assert.ok(asyncapi.includes(`address: "{prefix}/{hostId}/${t}"`), t);
  });

  it('docs/asyncapi.yaml is what the generator writes', () => {
    assert.equal(asyncapi, asyncApiYaml(), `stale: ${REGENERATE}`);
  });

  it('docs/cli.md mentions every command', () => {
    const cli = readFileSync(new URL('../../../docs/cli.md', import.meta.url), 'utf8');
    for (const c of COMMANDS) assert.ok(cli.includes(`mvirt ${c.name}`), c.name);
  });
});
