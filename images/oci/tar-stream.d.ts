/**
 * The part of tar-stream 2.x (no bundled types, and @types/tar-stream is not
 * a dependency) that mvirt uses: the extractor (images/oci/) and the packer
 * (tests and the bench make archives with it).
 */
declare module 'tar-stream' {
  import type { Readable, Writable } from 'node:stream';

  export interface Headers {
    name: string;
    mode?: number;
    uid?: number;
    gid?: number;
    size?: number;
    mtime?: Date;
    linkname?: string | null;
    type?:
      | 'file'
      | 'link'
      | 'symlink'
      | 'character-device'
      | 'block-device'
      | 'directory'
      | 'fifo'
      | 'contiguous-file'
      | 'pax-header'
      | 'pax-global-header'
      | 'gnu-long-link-path'
      | 'gnu-long-path'
      | null;
    devmajor?: number;
    devminor?: number;
  }

  export interface Extract extends Writable {
    on(
      event: 'entry',
      fn: (header: Headers, stream: Readable, next: (err?: Error) => void) => void,
    ): this;
    on(event: 'finish', fn: () => void): this;
    on(event: 'error', fn: (err: Error) => void): this;
  }

  export interface Pack extends Readable {
    entry(header: Headers, body?: string | Buffer, cb?: (err?: Error) => void): Writable;
    finalize(): void;
  }

  export function pack(): Pack;
  export function extract(opts?: {
    filenameEncoding?: string;
    allowUnknownFormat?: boolean;
  }): Extract;
}
