/** mvirtd is up: the audit event, the exposure warnings and the log line that say so. */
import type { Broker } from '../broker/types.js';
import type { EventLog } from '../events/log.js';
import type { HttpServer } from '../http/server.js';
import type { MvirtLogger } from '../log.js';
import { plainListenerWarnings } from './exposure.js';
import type { DaemonOptions } from './options.js';
import { VERSION } from './version.js';

export function announceStart(a: {
  opts: DaemonOptions;
  root: string;
  events: EventLog;
  log: MvirtLogger;
  addresses: Broker['addresses'];
  http: HttpServer | null;
  tls: boolean;
}): void {
  const { opts, events, log, addresses, http } = a;
  events.append({
    level: 'audit',
    component: 'daemon',
    message: `mvirtd ${VERSION} started as ${opts.hostId}`,
    objects: [`host:${opts.hostId}`],
    data: {
      addresses,
      http: http?.url ?? null,
      dataDir: opts.dataDir,
      uplink: opts.uplink?.broker ?? null,
    },
  });
  for (const w of plainListenerWarnings(opts, a.tls)) log.warn(w);
  log.info(
    {
      version: VERSION,
      root: a.root,
      addresses,
      http: http?.url ?? null,
      dataDir: opts.dataDir,
      uplink: opts.uplink?.url ?? null,
    },
    'mvirtd ready',
  );
}
