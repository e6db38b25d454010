/**
 * The part of mqtt.js's API the page uses, typed for a browser. mqtt.js's own
 * declarations pull in @types/node (through mqtt-packet, readable-stream and
 * ws), which would hand the page Node's globals (Buffer, process) and hide a
 * Node-only call until it fails in the browser; ./tsconfig.json maps `mqtt`
 * here instead. Written by hand because no package ships browser types for
 * mqtt.js; test/unit/dashboard-mqtt-types.ts makes tsc check that mqtt.js's
 * real client and options still fit these declarations.
 */
export interface BrowserClientOptions {
  clientId: string;
  protocolVersion: 4;
  clean: boolean;
  reconnectPeriod: number;
  connectTimeout: number;
  timerVariant: 'native';
  username?: string;
  password?: string;
}

export interface BrowserMqttClient {
  readonly connected: boolean;
  on(event: 'connect' | 'reconnect' | 'offline', cb: () => void): this;
  on(event: 'error', cb: (err: Error) => void): this;
  on(event: 'message', cb: (topic: string, payload: Uint8Array) => void): this;
  subscribe(filter: string | string[], opts: { qos: 0 }): this;
  publish(topic: string, payload: string, opts: { qos: 0 }): this;
  end(force: boolean): this;
}

declare const mqtt: { connect(url: string, opts: BrowserClientOptions): BrowserMqttClient };
export default mqtt;
