/**
 * Networking state: address leases of bridged VMs, their cloud-init seed
 * documents and the hash of each running boot's agent token.
 */
import type { Db } from './db.js';

export interface Lease {
  vmId: string;
  ip: string;
  mac: string;
}

export interface SeedDocs {
  userData?: string;
  metaData?: string;
  networkConfig?: string;
}

interface SeedRow {
  user_data: string | null;
  meta_data: string | null;
  network_config: string | null;
}

export function createNetworkRepo(db: Db) {
  const s = {
    lease: db.prepare(`SELECT vm_id AS vmId, ip, mac FROM net_leases WHERE vm_id = ?`),
    leasedIps: db.prepare(`SELECT ip FROM net_leases`).pluck(),
    insertLease: db.prepare(
      `INSERT INTO net_leases (vm_id, ip, mac, created_at) VALUES (?, ?, ?, ?)`,
    ),
    putSeed: db.prepare(
      `INSERT OR REPLACE INTO vm_seeds (vm_id, user_data, meta_data, network_config)
       VALUES (?, ?, ?, ?)`,
    ),
    seed: db.prepare(`SELECT user_data, meta_data, network_config FROM vm_seeds WHERE vm_id = ?`),
    setToken: db.prepare(`UPDATE vm_runtime SET agent_token_hash = ? WHERE vm_id = ?`),
    tokens: db.prepare(
      `SELECT vm_id AS vmId, agent_token_hash AS hash FROM vm_runtime
       WHERE agent_token_hash IS NOT NULL`,
    ),
  };
  return {
    lease: (vmId: string): Lease | undefined => s.lease.get(vmId) as Lease | undefined,
    /**
     * Allocate in one transaction: `pick` sees every leased address and returns
     * a free one (or throws); the UNIQUE constraints are the last word.
     */
    allocate(vmId: string, mac: string, pick: (taken: Set<string>) => string): Lease {
      return db.transaction((): Lease => {
        const existing = s.lease.get(vmId) as Lease | undefined;
        if (existing) return existing;
        const ip = pick(new Set(s.leasedIps.all() as string[]));
        s.insertLease.run(vmId, ip, mac, new Date().toISOString());
        return { vmId, ip, mac };
      })();
    },
    /** Every leased address (a dry run's pick of the next free one). */
    leasedIps: (): Set<string> => new Set(s.leasedIps.all() as string[]),
    putSeed(vmId: string, d: SeedDocs): void {
      s.putSeed.run(vmId, d.userData ?? null, d.metaData ?? null, d.networkConfig ?? null);
    },
    seed(vmId: string): SeedDocs | undefined {
      const r = s.seed.get(vmId) as SeedRow | undefined;
      if (!r) return undefined;
      const out: SeedDocs = {};
      if (r.user_data !== null) out.userData = r.user_data;
      if (r.meta_data !== null) out.metaData = r.meta_data;
      if (r.network_config !== null) out.networkConfig = r.network_config;
      return out;
    },
    /** Needs the runtime row (persisted right after launch). */
    setTokenHash(vmId: string, hash: string | null): void {
      s.setToken.run(hash, vmId);
    },
    tokenHashes: (): { vmId: string; hash: string }[] =>
      s.tokens.all() as { vmId: string; hash: string }[],
  };
}

export type NetworkRepo = ReturnType<typeof createNetworkRepo>;
