/** Errors that become `reply {ok:false, error}`; codes are the protocol's agent codes. */
import { AGENT_ERROR } from '../protocol/agent.js';
import type { FsAgentError } from '../protocol/fs.js';

export type AgentErrorCode = keyof typeof AGENT_ERROR | FsAgentError;

export class AgentError extends Error {
  readonly code: AgentErrorCode;
  constructor(code: AgentErrorCode, message: string) {
    super(message);
    this.name = 'AgentError';
    this.code = code;
  }
}

export function errorBody(err: unknown): { code: string; message: string } {
  if (err instanceof AgentError) return { code: err.code, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  return { code: AGENT_ERROR.INTERNAL, message: message.slice(0, 4096) };
}
