/**
 * Zero-delay timers without the browser's clamp. mqtt.js's browser bundle
 * carries the `process` shim whose nextTick is setTimeout(fn, 0); browsers
 * clamp nested zero timeouts to 4 ms, and MQTT over its stream shims takes
 * many ticks per packet, so the 200 retained VM states at connect took
 * ~2 ms each and connecting ~400 ms. The shim takes `setTimeout` from the
 * global object when it starts, so this module (imported before mqtt.js)
 * makes zero-delay timers a MessageChannel task: still a task, never
 * clamped. Timers with a delay are the browser's own.
 */
const realSetTimeout = globalThis.setTimeout.bind(globalThis);
const realClearTimeout = globalThis.clearTimeout.bind(globalThis);
const pending = new Map<number, () => void>();
// Negative ids never collide with the browser's (positive) timer ids.
let nextId = -1;
const channel = new MessageChannel();
channel.port1.onmessage = (e: MessageEvent<number>) => {
  const run = pending.get(e.data);
  if (!run) return; // cleared meanwhile
  pending.delete(e.data);
  run();
};

function setTimeoutFast(fn: TimerHandler, ms?: number, ...args: unknown[]): number {
  if ((ms ?? 0) > 0 || typeof fn !== 'function') return realSetTimeout(fn, ms, ...args);
  const id = nextId--;
  pending.set(id, () => (fn as (...a: unknown[]) => void)(...args));
  channel.port2.postMessage(id);
  return id;
}

function clearTimeoutFast(id?: number): void {
  if (typeof id === 'number' && id < 0) pending.delete(id);
  else realClearTimeout(id);
}

globalThis.setTimeout = setTimeoutFast as typeof globalThis.setTimeout;
globalThis.clearTimeout = clearTimeoutFast as typeof globalThis.clearTimeout;
