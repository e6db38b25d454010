/** The docs are generated from protocol/; these tests fail when they drift. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import { ERROR_CODES } from '../../../protocol/errors.js';
import { RPC_METHODS } from '../../../protocol/rpc.js';
import { VmRecord } from '../../../protocol/records.js';
import { METRIC_FIELD_NAMES } from '../../../protocol/metrics.js';
import {
  ASYNCAPI_PATH,
  asyncApiDocument,
  ERRORS_PATH,
  asyncApiYaml,
  errorsMarkdown,
  normalizeTables,
} from '../../../host/cli/docs-gen.js';
import { allCommands } from '../../../host/cli/table.js';

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

  // The ecosystem's own validator (what AsyncAPI Studio and the generator run):
  // the AsyncAPI 3 JSON schema plus its rules (refs resolve, operations point
  // at their channel's messages, payloads are valid schemas). Offline: the
  // spec schemas ship in @asyncapi/specs.
  const parser = new Parser();
  const problems = async (doc: string): Promise<string[]> =>
    (await parser.parse(doc)).diagnostics
      .filter((d) => d.severity <= DiagnosticSeverity.Warning)
      .map((d) => `${d.code} at ${d.path.join('.')}: ${d.message}`);

  it('docs/asyncapi.yaml is a valid AsyncAPI document (parser: no errors, no warnings)', async () => {
    assert.deepEqual(await problems(asyncapi), []);
  });

  it('the AsyncAPI parser catches a broken document (the check above can fail)', async () => {
    const broken = asyncapi.replace(
      '$ref: "#/components/schemas/VmRecord"',
      '$ref: "#/components/schemas/NoSuchRecord"',
    );
    assert.notEqual(broken, asyncapi);
    assert.ok((await problems(broken)).length > 0);
  });

  it('docs/asyncapi.yaml describes the records with the protocol schemas', () => {
    const doc = asyncApiDocument() as {
      components: { schemas: Record<string, { properties?: Record<string, unknown> }> };
    };
    for (const name of ['VmRecord', 'JobRecord', 'PoolRecord', 'EventRecord', 'SystemInfo'])
      assert.ok(doc.components.schemas[name], name);
    // Field for field what the zod schemas say, so a field added to a record is documented.
    assert.deepEqual(
      Object.keys(doc.components.schemas.VmRecord!.properties ?? {}),
      Object.keys(VmRecord.shape),
    );
    assert.deepEqual(Object.keys(doc.components.schemas.MetricPoint!.properties ?? {}), [
      't',
      'samples',
      ...METRIC_FIELD_NAMES,
    ]);
  });

  it('docs/cli.md mentions every command', async () => {
    const cli = readFileSync(new URL('../../../docs/cli.md', import.meta.url), 'utf8');
    for (const c of await allCommands()) assert.ok(cli.includes(`mvirt ${c.name}`), c.name);
  });
});
