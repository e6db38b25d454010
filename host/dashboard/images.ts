/**
 * The host's images (image.list): read when the page starts and again when
 * the event log says one was built, imported or deleted (audit events of
 * component `image`; no retained topic carries images).
 */
import type { EventRecord } from '../../protocol/records.js';
import type { ImageRecord } from '../../protocol/image.js';
import type { Conn } from './conn.js';
import { byId, fmt, h } from './dom.js';
import { bytes } from './disks.js';
import type * as schemaModule from './schemas.js';

type Schemas = typeof schemaModule;

function row(i: ImageRecord): HTMLTableRowElement {
  const used = [...i.usedBy.vms, ...i.usedBy.pools.map((p) => `pool ${p}`)];
  return h(
    'tr',
    { class: 'image', 'data-name': i.name },
    h('td', { title: i.key }, i.name),
    h('td', {}, i.kind),
    h('td', { class: 'num' }, bytes(i.sizeBytes)),
    h('td', { title: i.rootDigest ?? '' }, i.base ?? '–'),
    h('td', {}, i.builtAt === '' ? '–' : fmt.time(i.builtAt)),
    h('td', {}, used.length > 0 ? used.join(', ') : '–'),
  );
}

export function imagesView(conn: Conn, schemas: Promise<Schemas>): void {
  const body = byId('images').querySelector('tbody')!;
  const count = byId('image-count');
  let loading = false;
  let again = false;
  const load = (): void => {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    Promise.all([conn.call('image.list'), schemas])
      .then(([r, v]) => {
        const p = v.ImageRecord.array().safeParse(r.images);
        if (!p.success) return console.warn('image.list not understood', p.error);
        body.replaceChildren(
          ...(p.data.length > 0
            ? p.data.map(row)
            : [h('tr', { class: 'none' }, h('td', { colspan: '6' }, 'no images'))]),
        );
        count.textContent = `(${p.data.length})`;
      })
      .catch((err: unknown) => console.warn('image.list', err))
      .finally(() => {
        loading = false;
        if (again) {
          again = false;
          load();
        }
      });
  };
  conn.subscribe(conn.t.events, (_t, payload) => {
    const e = JSON.parse(new TextDecoder().decode(payload)) as EventRecord;
    if (e.component === 'image' && e.level === 'audit') load();
  });
  requestAnimationFrame(() => setTimeout(load, 0));
}
