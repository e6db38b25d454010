/**
 * Print a password hash for the broker's users file:
 *
 *     printf '%s' 'secret' | node --import tsx host/broker/hash-password.ts
 *
 * The password is read from stdin, never from the command line (where other
 * users could see it in the process list).
 */
import { hashPassword } from './passwords.js';

const chunks: Buffer[] = [];
for await (const c of process.stdin) chunks.push(c as Buffer);
const password = Buffer.concat(chunks)
  .toString('utf8')
  .replace(/\r?\n$/, '');
if (password.length === 0) {
  console.error('usage: printf %s PASSWORD | hash-password');
  process.exit(2);
}
console.log(await hashPassword(password));
