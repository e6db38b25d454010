/** A few DOM helpers: the dashboard is small enough not to need a framework. */
import { inert } from '../../protocol/inert.js';

/** An element; string children are text (never markup), made inert (no bidi override reorders a row). */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | undefined> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined) el.setAttribute(k, v);
  el.append(...children.map((c) => (typeof c === 'string' ? inert(c) : c)));
  return el;
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
}

export const fmt = {
  pct: (v: number | undefined): string => (v === undefined ? '–' : `${v.toFixed(0)} %`),
  mib: (v: number | undefined): string =>
    v === undefined ? '–' : v >= 1024 ? `${(v / 1024).toFixed(1)} GiB` : `${v.toFixed(0)} MiB`,
  time: (iso: string): string => new Date(iso).toLocaleTimeString(),
};

let toastTimer: ReturnType<typeof setTimeout> | undefined;

/** Show an error for a few seconds (a refused button, a lost connection). */
export function toast(message: string): void {
  const el = byId('toast');
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 6000);
}
