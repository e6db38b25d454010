/**
 * Input checks the broker applies before any ACL: client ids, publish topics
 * and subscription filters. Topic rules (length, depth, control characters)
 * come from protocol/topics.ts so the broker and the API agree on them.
 */
import { MAX_NAME_LENGTH, topicProblem } from '../../protocol/topics.js';

/**
 * Client ids: what MQTT 3.1.1 allows (any UTF-8, spaces included; §3.1.3.1
 * lets a server accept more than 23 characters), except what would alias a
 * topic: a client id is a level of its reply namespace
 * `<prefix>/_clients/<clientId>/`, so `/`, `+`, `#`, `.`/`..`, a leading `$`,
 * NUL and control characters are refused (CONNACK 2).
 */
export function clientIdProblem(id: string): string | null {
  if (id.length === 0) return 'client id is empty';
  if (id.length > MAX_NAME_LENGTH) return `client id longer than ${MAX_NAME_LENGTH} characters`;
  // eslint-disable-next-line no-control-regex -- refusing control characters is the point
  if (/[/+#\u0000-\u001f\u007f]/.test(id))
    return "client id contains '/', '+', '#' or a control character (it names a topic level)";
  if (id === '.' || id === '..' || id.startsWith('$'))
    return `client id ${JSON.stringify(id)} is reserved`;
  return null;
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
