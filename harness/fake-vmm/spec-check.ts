/**
 * Checks a request against a VMM's official API spec (specs/*.yaml): the
 * method and path must be an operation of the spec, and the JSON body must
 * validate against that operation's body schema. Used by the fake VMMs on
 * every request they get; a request the spec does not allow is answered 400
 * and recorded, and the tests fail on any record.
 *
 * ajv (the well-kept JSON Schema validator; OpenAPI 3.0 and Swagger 2.0
 * schemas are JSON Schema draft-4/-5 dialects that ajv reads with strict mode
 * off) and yaml (the parser mvirt already uses) do the work; what is written
 * here is only the walk from an OpenAPI operation to its schema.
 *
 * One deliberate tightening: objects that do not say `additionalProperties`
 * get `additionalProperties: false`. A field the spec does not name is a
 * mistake of ours (a typo, a field of another version) that the real VMM
 * would either refuse (Firecracker's serde deny_unknown_fields) or silently
 * ignore; either way it must fail the test.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ValidateFunction } from 'ajv';
import { parse } from 'yaml';

export const SPECS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../specs');

type Json = Record<string, unknown>;

interface Operation {
  method: string;
  /** Matches the request path (below the base path). */
  pattern: RegExp;
  template: string;
  /** null: the operation takes no body. */
  body: ValidateFunction | null;
  bodyRequired: boolean;
}

export interface SpecChecker {
  /** The spec's title and version, for messages. */
  readonly title: string;
  /** null when allowed, else why not. */
  check(method: string, path: string, body: unknown): string | null;
}

function tighten(node: unknown): void {
  if (Array.isArray(node)) return node.forEach(tighten);
  if (!node || typeof node !== 'object') return;
  const o = node as Json;
  if (o.type === 'object' && o.properties && o.additionalProperties === undefined)
    o.additionalProperties = false;
  for (const v of Object.values(o)) tighten(v);
}

/** Swagger 2.0 / OpenAPI 3.0 keywords JSON Schema does not have, removed before compiling. */
function scrub(node: unknown): void {
  if (Array.isArray(node)) return node.forEach(scrub);
  if (!node || typeof node !== 'object') return;
  const o = node as Json;
  // OpenAPI 3.0's nullable: a null value is allowed too.
  if (o.nullable === true && typeof o.type === 'string') o.type = [o.type, 'null'];
  for (const k of ['nullable', 'example', 'x-nullable', 'discriminator', 'readOnly', 'xml'])
    delete o[k];
  for (const v of Object.values(o)) scrub(v);
}

export function loadSpec(file: string): SpecChecker {
  const doc = parse(readFileSync(file, 'utf8')) as Json;
  tighten(doc);
  scrub(doc);
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
  const id = 'spec';
  const schemas = (doc.components as Json | undefined)?.schemas ?? doc.definitions;
  const defsKey = doc.components ? 'components' : 'definitions';
  ajv.addSchema(
    defsKey === 'components'
      ? { $id: id, components: { schemas } }
      : { $id: id, definitions: schemas },
  );
  const compile = (schema: Json): ValidateFunction => {
    // $refs are document-relative (`#/components/schemas/X`): resolve them in the added document.
    const text = JSON.stringify(schema).replace(/"\$ref":"#\//g, `"$ref":"${id}#/`);
    return ajv.compile(JSON.parse(text) as Json);
  };
  const info = doc.info as Json;
  const servers = doc.servers as { url: string }[] | undefined;
  const base = servers?.[0] ? new URL(servers[0].url).pathname.replace(/\/$/, '') : '';
  const ops: Operation[] = [];
  for (const [template, item] of Object.entries(doc.paths as Json)) {
    const pattern = new RegExp(
      `^${base}${template.replace(/[.]/g, '\\.').replace(/\{[^}]+\}/g, '([^/]+)')}$`,
    );
    for (const [method, op] of Object.entries(item as Json)) {
      if (!['get', 'put', 'patch', 'post', 'delete'].includes(method)) continue;
      const o = op as Json;
      let schema: Json | undefined;
      let required = false;
      const rb = o.requestBody as Json | undefined;
      if (rb) {
        schema = ((rb.content as Json)['application/json'] as Json | undefined)?.schema as Json;
        required = rb.required === true;
      }
      const param = ((o.parameters as Json[] | undefined) ?? []).find((p) => p.in === 'body');
      if (param) {
        schema = param.schema as Json;
        required = param.required === true;
      }
      ops.push({
        method: method.toUpperCase(),
        pattern,
        template,
        body: schema ? compile(schema) : null,
        bodyRequired: required,
      });
    }
  }
  return {
    title: `${String(info.title)} ${String(info.version)}`,
    check(method, reqPath, body) {
      const p = reqPath.split('?')[0]!;
      const matching = ops.filter((o) => o.pattern.test(p));
      if (matching.length === 0) return `${method} ${p}: no such path in the spec`;
      const op = matching.find((o) => o.method === method);
      if (!op)
        return `${method} ${p}: the spec allows only ${matching.map((o) => o.method).join(', ')} there`;
      if (body === undefined) {
        return op.bodyRequired ? `${method} ${op.template}: the body is required` : null;
      }
      if (!op.body) return `${method} ${op.template}: the spec defines no request body`;
      if (op.body(body)) return null;
      const errs = (op.body.errors ?? [])
        .map(
          (e) =>
            `${e.instancePath || '/'} ${e.message ?? ''}${e.params && 'additionalProperty' in e.params ? ` (${String(e.params.additionalProperty)})` : ''}`,
        )
        .join('; ');
      return `${method} ${op.template}: body does not match the spec: ${errs}`;
    },
  };
}
