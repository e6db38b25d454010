/**
 * Reading tar archives (layers, `docker save` and OCI layout archives) with
 * tar-stream, and opening a layer blob whatever its compression.
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { PassThrough, type Readable, type Transform, type Writable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import * as tarStream from 'tar-stream';
import { MvirtError } from '../../protocol/errors.js';

export type TarHeader = tarStream.Headers;

/**
 * Call `onEntry` for each entry in order; the body must be consumed (or is
 * drained) before the next. A damaged archive rejects with IMAGE_INVALID
 * naming `what`; an error thrown by `onEntry` rejects as it is.
 */
export function readTar(
  input: Readable,
  what: string,
  onEntry: (h: TarHeader, body: Readable) => Promise<void>,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const ex = tarStream.extract();
    let failed = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      input.unpipe(ex);
      input.destroy();
      ex.destroy();
      reject(
        err instanceof MvirtError
          ? err
          : new MvirtError(
              'IMAGE_INVALID',
              `${what} is not a readable tar archive (${(err as Error).message}): the file is damaged or not an image archive; export it again`,
              { cause: err },
            ),
      );
    };
    ex.on('entry', (h, body, next) => {
      // readable-stream 3 (tar-stream's) has no readableEnded: watch 'end' from the start.
      let ended = false;
      let waiting = false;
      body.once('end', () => {
        ended = true;
        if (waiting) next();
      });
      onEntry(h, body).then(
        () => {
          // Whatever the handler left unread is drained, so the next header comes.
          if (ended) next();
          else {
            waiting = true;
            body.resume();
          }
        },
        (err: unknown) => fail(entryError(err, what, h.name)),
      );
    });
    ex.on('finish', () => {
      if (!failed) resolve();
    });
    ex.on('error', fail);
    input.on('error', fail);
    input.pipe(ex);
  });
}

/**
 * An entry's body → (transform) → a file. Not stream.pipeline: tar-stream's
 * entry streams are readable-stream 3 streams that never emit 'close', on
 * which pipeline waits.
 */
export function writeBody(body: Readable, out: Writable, through?: Transform): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error): void => {
      body.unpipe();
      through?.destroy();
      out.destroy();
      reject(err);
    };
    body.on('error', fail);
    through?.on('error', fail);
    out.on('error', fail);
    out.on('close', () => resolve());
    (through ? body.pipe(through) : body).pipe(out);
  });
}

/** A failure while writing an entry out: not the archive's fault unless it says so. */
function entryError(err: unknown, what: string, entry: string): MvirtError {
  if (err instanceof MvirtError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOSPC' || e.code === 'EDQUOT')
    return new MvirtError(
      'STORAGE_FULL',
      `${what}: no space left writing "${entry}" (the cache folder, $MVIRT_CACHE_DIR/oci): free some or import a smaller image`,
      { cause: err },
    );
  return new MvirtError(
    'IMAGE_INVALID',
    `${what}: entry "${entry}" cannot be written (${e.message}): fix the entry or export the image again`,
    { cause: err, details: { entry } },
  );
}

const GZIP = Buffer.from([0x1f, 0x8b]);
const ZSTD = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** A layer blob as an uncompressed tar stream (plain tar or gzip, told by its first bytes). */
export async function openLayer(file: string, what: string): Promise<Readable> {
  const fh = await open(file, 'r');
  const head = Buffer.alloc(4);
  try {
    await fh.read(head, 0, 4, 0);
  } finally {
    await fh.close();
  }
  if (head.subarray(0, 4).equals(ZSTD))
    throw new MvirtError(
      'IMAGE_INVALID',
      `${what} is zstd-compressed, which this Node cannot read: export the image with gzip or uncompressed layers`,
    );
  const raw = createReadStream(file, { highWaterMark: 1 << 20 });
  if (!head.subarray(0, 2).equals(GZIP)) return raw;
  const gunzip = createGunzip({ chunkSize: 1 << 20 });
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  const bad = (err: Error): void => {
    out.destroy(
      new MvirtError(
        'IMAGE_INVALID',
        `${what} is not valid gzip (${err.message}): the file is damaged; export the image again`,
        { cause: err },
      ),
    );
  };
  raw.on('error', bad);
  gunzip.on('error', bad);
  raw.pipe(gunzip).pipe(out);
  return out;
}
