/*
 * One direction of a byte relay between two non-blocking fds, shared by
 * vsock-connect.c (both ends of the vsock channel) and mvirt-pty.c (job <->
 * pty master): included by both (each helper is one compiled file, see
 * images/helpers.ts). What a failed write means is each helper's own.
 */
#ifndef MVIRT_RELAY_H
#define MVIRT_RELAY_H

#include <errno.h>
#include <stddef.h>
#include <unistd.h>

#define BUF (64 * 1024)

struct dir {
  int from, to;
  char buf[BUF];
  size_t len, off;
  int eof;  /* read side ended (or failed) */
  int done; /* vsock-connect: write side shut down, nothing more this way */
};

/*
 * Read into an empty buffer (0 bytes or a hard error: eof), then write out
 * what is buffered. Returns -1 when the write failed for good (the reader is
 * gone), else 0.
 */
static int relay_step(struct dir *d) {
  if (d->len == 0 && !d->eof) {
    ssize_t n = read(d->from, d->buf, BUF);
    if (n > 0) {
      d->len = (size_t)n;
      d->off = 0;
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      d->eof = 1;
    }
  }
  if (d->len > 0) {
    ssize_t n = write(d->to, d->buf + d->off, d->len);
    if (n > 0) {
      d->off += (size_t)n;
      d->len -= (size_t)n;
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return -1;
    }
  }
  return 0;
}

#endif
