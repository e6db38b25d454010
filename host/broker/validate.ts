/**
 * Input checks the broker applies before any ACL: client ids, publish topics
 * and subscription filters. Topic rules (length, depth, control characters)
 * come from protocol/topics.ts so the broker and the API agree on them.
 */
import { MAX_NAME_LENGTH, nameProblem, topicProblem } from '../../protocol/topics.js';

/** Client ids share the safe name alphabet (no '/', '+', '#', NUL, controls). */
export function clientIdProblem(id: string): string | null {
  if (id.length > MAX_NAME_LENGTH) return `client id longer than ${MAX_NAME_LENGTH} characters`;
  const p = nameProblem(id);
  return p === null ? null : `client id ${p}`;
}

/** A publish topic: no wildcards, bounded, printable. */
export const publishTopicProblem = (topic: string): string | null => topicProblem(topic);

/**
 * A subscription filter: bounded and printable like a topic, and its wildcards
 * well formed: `+` and `#` fill a whole level, `#` only as the last level.
 */
export function filterProblem(filter: string): string | null {
  const p = topicProblem(filter, { allowWildcards: true });
  if (p !== null) return p;
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]!;
    if (level === '+') continue;
    if (level === '#') {
      if (i !== levels.length - 1) return "'#' is allowed only as the last level";
      continue;
    }
    if (level.includes('+') || level.includes('#')) return 'a wildcard must fill a whole level';
  }
  return null;
}

/** True when the filter contains a wildcard anywhere. */
export const hasWildcard = (filter: string): boolean => /[+#]/.test(filter);
