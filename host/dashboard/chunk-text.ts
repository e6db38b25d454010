/**
 * A job's output chunks as text for the page: a job run with encoding: bytes
 * (as `mvirt run` does) sends base64, shown decoded as UTF-8 with one decoder
 * per stream, so that characters split across chunks join up.
 */
import type { OutputChunk } from '../../protocol/rpc.js';

export function chunkTexts(chunks: readonly OutputChunk[]): string[] {
  const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  return chunks.map((c) =>
    c.encoding === 'base64'
      ? decoders[c.stream].decode(
          Uint8Array.from(atob(c.data), (ch) => ch.charCodeAt(0)),
          { stream: true },
        )
      : c.data,
  );
}
