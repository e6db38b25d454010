/**
 * The event log: the latest events (events.query), then every new one live
 * from `<root>/events`. Level and object filters ask the daemon again (the
 * store has the history); the text filter narrows what is loaded.
 */
import type { EventRecord, ParamsOf } from '../../protocol/rpc.js';
import type { Conn } from './conn.js';
import { byId, fmt, h, toast } from './dom.js';
import type { Model } from './model.js';

const PAGE = 200;

interface Filters {
  level: string;
  object: string;
  text: string;
}

function line(e: EventRecord): HTMLLIElement {
  return h(
    'li',
    { 'data-id': String(e.id), 'data-level': e.level },
    h('span', { class: 'time' }, fmt.time(e.at)),
    ' ',
    h('span', { class: `lvl ${e.level}` }, e.level),
    ` ${e.component}: ${e.message} `,
    h('span', { class: 'objs' }, e.objects.join(' ')),
  );
}

export function eventsView(m: Model, conn: Conn): void {
  const list = byId('events');
  const form = byId<HTMLFormElement>('event-filters');
  const f: Filters = { level: '', object: '', text: '' };
  /** The object filter as the events link it: a VM name means its id. */
  let objectId = '';

  const matches = (e: EventRecord): boolean =>
    (f.level === '' || e.level === f.level) &&
    (objectId === '' || e.objects.includes(objectId)) &&
    (f.text === '' || e.message.toLowerCase().includes(f.text.toLowerCase()));

  m.on('events', () => {
    const shown = m.events.filter(matches).slice(-PAGE).reverse();
    list.replaceChildren(...shown.map(line));
  });

  const load = (): void => {
    const p: NonNullable<ParamsOf<'events.query'>> = { limit: PAGE };
    if (f.level !== '') p.level = f.level as NonNullable<typeof p.level>;
    if (objectId !== '') p.objectId = objectId;
    conn
      .call('events.query', p)
      .then((r) => m.addEvents(r.events))
      .catch((err: unknown) => toast(`events: ${String((err as Error).message)}`));
  };

  form.addEventListener('input', () => {
    const data = new FormData(form);
    const prev = { ...f };
    f.level = String(data.get('level') ?? '');
    f.object = String(data.get('object') ?? '').trim();
    f.text = String(data.get('text') ?? '').trim();
    const vm = [...m.vms.values()].find((v) => v.name === f.object);
    objectId = vm ? vm.id : f.object;
    m.changed('events');
    if (prev.level !== f.level || prev.object !== f.object) load();
  });
  form.addEventListener('submit', (ev) => ev.preventDefault());

  conn.subscribe(conn.t.events, (_t, payload) => {
    m.addEvents([JSON.parse(new TextDecoder().decode(payload)) as EventRecord]);
  });
  // The history can wait until the VM table has been drawn once: on a first
  // load the table is what the page is for.
  requestAnimationFrame(() => setTimeout(load, 0));
}
