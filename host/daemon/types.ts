/** What startDaemon gives back, and what tests may put in place of its parts. */
import type { Broker } from '../broker/types.js';
import type { Api } from '../api/server.js';
import type { AgentSessions } from '../agent/sessions.js';
import type { EventLog } from '../events/log.js';
import type { Hypervisor } from '../hypervisors/types.js';
import type { Store } from '../store/index.js';
import type { VmManager } from '../vm/manager.js';
import type { Topics } from '../../protocol/topics.js';
import type { TlsContext } from '../broker/tls.js';
import type { HttpServer } from '../http/server.js';
import type { Uplink } from '../uplink/link.js';

export interface Daemon {
  readonly broker: Broker;
  readonly store: Store;
  readonly vms: VmManager;
  /** Each VM's agent session (calls to the agents). */
  readonly agents: AgentSessions;
  /** The event/audit log (and its gate for guest-caused events). */
  readonly events: EventLog;
  readonly api: Api;
  /** The link to an external broker (--uplink), null without one. */
  readonly uplink: Uplink | null;
  readonly topics: Topics;
  /** The HTTP listener (/metrics, dashboard), when --http is on. */
  readonly http: HttpServer | null;
  /** TLS of the controller listeners, when configured. */
  readonly tls: TlsContext | null;
  /** SIGHUP: read the TLS certificate and key again (a failure keeps the old ones). */
  reloadTls(): void;
  /** Orderly stop: leaves VMs running unless options.stopVmsOnExit. */
  close(): Promise<void>;
}

export interface DaemonOverrides {
  /** Test doubles instead of the compiled-in backends. */
  hypervisors?: Hypervisor[];
  /**
   * How often roll-ups reach SQLite (default 10 s): tests that
   * compare the database file byte for byte (dry runs) hold it still.
   */
  rollupFlushMs?: number;
}
