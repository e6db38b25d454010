/**
 * JSON Schema for the AsyncAPI document, converted from the zod schemas of
 * protocol/ with zod's own `z.toJSONSchema`: nothing here describes a record
 * by hand. Named records become `components/schemas` entries and every use of
 * one becomes a `$ref` to it. Draft 7, because AsyncAPI's Schema Object is a
 * superset of JSON Schema draft 7.
 */
import * as z from 'zod';
import { VmTelemetry } from '../../../protocol/metrics.js';
import { MetricPoint, MetricsResult } from '../../../protocol/metrics.js';
import {
  BrokerOwner,
  ErrorBodySchema,
  EventRecord,
  HostStatus,
  JobLogs,
  JobRecord,
  JobRunResult,
  JobStateSchema,
  JobTarget,
  NetworkSpec,
  OutputChunk,
  PoolRecord,
  SystemInfo,
  VmEvent,
  VmRecord,
  VmStateSchema,
  VolumeRecord,
} from '../../../protocol/records.js';
import { PortForwardNotice, PortForwardRecord } from '../../../protocol/ports.js';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** The records the document names, by their component name (the TypeScript type's name). */
export const NAMED: Record<string, z.ZodType> = {
  VmState: VmStateSchema,
  JobState: JobStateSchema,
  NetworkSpec,
  VmRecord,
  VmEvent,
  JobTarget,
  JobRecord,
  JobRunResult,
  OutputChunk,
  JobLogs,
  PoolRecord,
  VolumeRecord,
  EventRecord,
  SystemInfo,
  HostStatus,
  BrokerOwner,
  VmTelemetry,
  MetricPoint,
  MetricsResult,
  PortForwardRecord,
  PortForwardNotice,
  ErrorBody: ErrorBodySchema,
};

type Meta = { id?: string; description?: string };

/**
 * The component ids, over the descriptions `.describe()` keeps in zod's
 * global registry: a conversion reads one registry, and needs both.
 */
class DocsRegistry extends z.core.$ZodRegistry<Meta> {
  override get(schema: z.core.$ZodType): Meta | undefined {
    const global = z.globalRegistry.get(schema) as Meta | undefined;
    const own = super.get(schema);
    return global || own ? { ...global, ...own } : undefined;
  }
}

const registry = new DocsRegistry();
for (const [id, schema] of Object.entries(NAMED)) registry.add(schema, { id });

const COMPONENTS = '#/components/schemas/';

/**
 * Tidy zod's output for a document people read: refs point into components,
 * no `$schema`/`$id`/`definitions` (every named schema is a component), no long
 * regexes (zod spells date-time as one; `format` says it) and no bounds that
 * only restate JavaScript's safe integers.
 */
function tidy(v: unknown): Json {
  return JSON.parse(JSON.stringify(v), (k, x: Json) => {
    if (k === '$schema' || k === '$id' || k === 'definitions') return undefined;
    if (k === '$ref' && typeof x === 'string') return x.replace(/^#\/definitions\//, COMPONENTS);
    if (k === 'pattern' && typeof x === 'string' && x.length > 80) return undefined;
    if ((k === 'maximum' || k === 'minimum') && Math.abs(x as number) === Number.MAX_SAFE_INTEGER)
      return undefined;
    return x;
  }) as Json;
}

/**
 * One schema (a method's params or result) as JSON Schema, with refs to the
 * named components. `input`: what a caller may write (defaults optional);
 * `output`: what a receiver gets.
 */
export function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): Json {
  const name = registry.get(schema)?.id;
  if (name !== undefined) return { $ref: `${COMPONENTS}${name}` };
  return tidy(
    z.toJSONSchema(schema, { target: 'draft-7', io, unrepresentable: 'any', metadata: registry }),
  );
}

/** Every named record, as components/schemas. */
export function componentSchemas(): Record<string, Json> {
  const out = z.toJSONSchema(registry, {
    target: 'draft-7',
    io: 'output',
    unrepresentable: 'any',
    uri: (id) => `${COMPONENTS}${id}`,
  });
  return tidy(out.schemas) as Record<string, Json>;
}
