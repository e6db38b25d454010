/**
 * What the tables read by RPC share (images, snapshots): a list call that
 * runs one at a time, asked again by the event log, and the one row that says
 * a table is empty.
 */
import type { EventRecord } from '../../protocol/records.js';
import type { ParamsOf, ResultOf, RpcMethod } from '../../protocol/rpc.js';
import type { Conn } from './conn.js';
import { h } from './dom.js';
import type * as schemaModule from './schemas.js';

type Schemas = typeof schemaModule;
type Parsed<T> = { success: true; data: T } | { success: false; error: unknown };

/** `rows`, or one row across `columns` saying `none`. */
export function rowsOrNone(
  rows: HTMLTableRowElement[],
  columns: number,
  none: string,
): HTMLTableRowElement[] {
  return rows.length > 0
    ? rows
    : [h('tr', { class: 'none' }, h('td', { colspan: String(columns) }, none))];
}

/**
 * A loader of `method`'s list: one request at a time (a load asked meanwhile
 * asks once more after it); `parse` checks the reply with the page's schemas,
 * `use` takes what passed. The first load runs after the page's first draw;
 * later ones whenever an event passes `reloadOn`.
 */
export function listLoader<M extends RpcMethod, T>(d: {
  conn: Conn;
  schemas: Promise<Schemas>;
  method: M;
  params?: ParamsOf<M>;
  parse: (result: ResultOf<M>, schemas: Schemas) => Parsed<T>;
  use: (data: T) => void;
  reloadOn: (e: EventRecord) => boolean;
}): void {
  let loading = false;
  let again = false;
  const load = (): void => {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    Promise.all([d.conn.call(d.method, d.params), d.schemas])
      .then(([r, v]) => {
        const p = d.parse(r, v);
        if (!p.success) return console.warn(`${d.method} not understood`, p.error);
        d.use(p.data);
      })
      .catch((err: unknown) => console.warn(d.method, err))
      .finally(() => {
        loading = false;
        if (again) {
          again = false;
          load();
        }
      });
  };
  d.conn.subscribe(d.conn.t.events, (_t, payload) => {
    const e = JSON.parse(new TextDecoder().decode(payload)) as EventRecord;
    if (d.reloadOn(e)) load();
  });
  requestAnimationFrame(() => setTimeout(load, 0));
}
