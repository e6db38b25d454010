/** Times in RPC params: epoch milliseconds or an ISO date-time (validated by the protocol schema). */
import { MvirtError } from '../../protocol/errors.js';

export function toMs(v: number | string, field: string): number;
export function toMs(v: number | string | undefined, field: string): number | undefined;
export function toMs(v: number | string | undefined, field: string): number | undefined {
  if (v === undefined) return undefined;
  const ms = typeof v === 'number' ? v : Date.parse(v);
  if (!Number.isFinite(ms)) throw new MvirtError('INVALID_PARAMS', `${field}: not a time`);
  return ms;
}
