/**
 * The host's images (image.list): read when the page starts and again when
 * the event log says one was built, imported or deleted (audit events of
 * component `image`; no retained topic carries images).
 */
import type { ImageRecord } from '../../protocol/image.js';
import type { Conn } from './conn.js';
import { byId, fmt, h } from './dom.js';
import { bytes } from './disks.js';
import { listLoader, rowsOrNone } from './table.js';
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
  listLoader({
    conn,
    schemas,
    method: 'image.list',
    parse: (r, v) => v.ImageRecord.array().safeParse(r.images),
    use: (images) => {
      body.replaceChildren(...rowsOrNone(images.map(row), 6, 'no images'));
      count.textContent = `(${images.length})`;
    },
    reloadOn: (e) => e.component === 'image' && e.level === 'audit',
  });
}
