/**
 * Per-boot agent tokens for the guest TCP listener: 256 random bits, handed
 * to the guest inside its seed disk (never on a command line), kept here only
 * as a SHA-256 hash, persisted with the VM's runtime row so that a re-attached
 * VM's agent can reconnect after a daemon restart. A new boot gets a new
 * token; the old one stops working the moment its boot ends.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { NetworkRepo } from '../store/network.js';

const hash = (token: string): Buffer => createHash('sha256').update(token, 'utf8').digest();

export interface AgentTokens {
  /** A new token for this boot (replaces any earlier one). */
  issue(vmId: string): string;
  /** Persist the current boot's hash (the runtime row exists now). */
  persist(vmId: string): void;
  verify(vmId: string, token: string): boolean;
  revoke(vmId: string): void;
  /** After a restart: the hashes of re-attached VMs. */
  load(vmIds: ReadonlySet<string>): void;
}

export function createAgentTokens(repo: NetworkRepo): AgentTokens {
  const hashes = new Map<string, Buffer>();
  return {
    issue(vmId) {
      const token = randomBytes(32).toString('base64url');
      hashes.set(vmId, hash(token));
      return token;
    },
    persist(vmId) {
      const h = hashes.get(vmId);
      if (h) repo.setTokenHash(vmId, h.toString('hex'));
    },
    verify(vmId, token) {
      const want = hashes.get(vmId);
      // Same work whether or not the VM has a token: no timing hint either way.
      const got = hash(token);
      return want !== undefined && timingSafeEqual(want, got);
    },
    revoke(vmId) {
      hashes.delete(vmId);
    },
    load(vmIds) {
      for (const { vmId, hash: h } of repo.tokenHashes())
        if (vmIds.has(vmId)) hashes.set(vmId, Buffer.from(h, 'hex'));
    },
  };
}
