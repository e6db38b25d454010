/*
 * vsock-connect: the guest side of the agent's vsock channel.
 *
 * Node has no AF_VSOCK, and libuv will not adopt a vsock fd as a stream (it
 * only knows TCP and unix sockets), so the agent (one Node executable) cannot
 * hold the connection itself. It spawns this helper for each dial instead:
 *
 *   vsock-connect CID PORT        (the agent: 2 1024, the host)
 *   vsock-connect unix:PATH       (tests: a unix socket instead of vsock)
 *
 * The helper connects, says "connected" on stderr (or why not, and exits 1),
 * then relays bytes both ways between fd 3 (the agent's end of a unix
 * socketpair that node's spawn made) and the connection until both directions
 * have ended. A half-close is passed on (shutdown SHUT_WR). It dies with the
 * agent (PR_SET_PDEATHSIG) and is static, so the µOS needs no libc for it.
 * Built at image build time (images/layout.ts) with the C compiler of
 * build-essential.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define AGENT_FD 3
#define BUF (64 * 1024)

struct dir {
  int from, to;
  char buf[BUF];
  size_t len, off;
  int eof;  /* read side ended: shut the write side down once drained */
  int done; /* write side shut down (or failed): nothing more this way */
};

static void die(const char *what) {
  fprintf(stderr, "vsock-connect: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int dial(int argc, char **argv) {
  if (argc == 2 && strncmp(argv[1], "unix:", 5) == 0) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[1] + 5) >= sizeof a.sun_path) {
      fprintf(stderr, "vsock-connect: unix path too long\n");
      exit(2);
    }
    strcpy(a.sun_path, argv[1] + 5);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket(AF_UNIX)");
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    return s;
  }
  if (argc != 3) {
    fprintf(stderr, "usage: vsock-connect CID PORT | unix:PATH\n");
    exit(2);
  }
  char *end;
  unsigned long cid = strtoul(argv[1], &end, 10);
  if (*end) exit(2);
  unsigned long port = strtoul(argv[2], &end, 10);
  if (*end) exit(2);
  struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
  int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket(AF_VSOCK)");
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  return s;
}

/*
 * One step of a direction (both fds are non-blocking): read into an empty
 * buffer, write out what is buffered, shut the write side down once the read
 * side has ended and the buffer is drained. Returns -1 when the write side is
 * gone (the channel is over).
 */
static int pump(struct dir *d) {
  if (d->done) return 0;
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
  if (d->eof && d->len == 0) {
    shutdown(d->to, SHUT_WR);
    d->done = 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 1; /* the agent is already gone */
  signal(SIGPIPE, SIG_IGN);
  if (fcntl(AGENT_FD, F_GETFD) < 0) die("fd 3 (the agent's end)");
  int s = dial(argc, argv);
  fprintf(stderr, "connected\n");
  fcntl(AGENT_FD, F_SETFL, fcntl(AGENT_FD, F_GETFL) | O_NONBLOCK);
  fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
  static struct dir up, down; /* up: agent → host; down: host → agent */
  up.from = AGENT_FD, up.to = s;
  down.from = s, down.to = AGENT_FD;
  while (!(up.done && down.done)) {
    struct pollfd p[2] = {{.fd = AGENT_FD}, {.fd = s}};
    /* Read only into an empty buffer; wait to write only while one is full. */
    if (!up.done) {
      if (up.len == 0 && !up.eof) p[0].events |= POLLIN;
      if (up.len > 0) p[1].events |= POLLOUT;
    }
    if (!down.done) {
      if (down.len == 0 && !down.eof) p[1].events |= POLLIN;
      if (down.len > 0) p[0].events |= POLLOUT;
    }
    /* A hung-up fd nobody waits on would wake poll at once, forever. */
    for (int i = 0; i < 2; i++)
      if (!p[i].events) p[i].fd = -1;
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (pump(&up) < 0 || pump(&down) < 0) return 0;
  }
  return 0;
}
