/*
 * vsock-connect: both ends of mvirt's vsock relay.
 *
 * In the guest. Node has no AF_VSOCK, and libuv will not adopt a vsock fd as
 * a stream (it only knows TCP and unix sockets), so the agent (one Node
 * executable) cannot hold the connection itself. It spawns this helper for
 * each dial instead:
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
 *
 * On the host, for QEMU's vhost-vsock (mvirtd has no AF_VSOCK either):
 *
 *   vsock-connect --listen PORT DIR [unix:PATH]
 *
 * listens on vsock port PORT of every CID, says "listening" on stderr, and
 * relays each connection a guest makes to the unix socket DIR/<CID>_<PORT>,
 * where mvirtd listens for the VM it gave that CID: the same path scheme as
 * the hybrid vsock of cloud-hypervisor and Firecracker, so mvirtd serves all
 * three alike. The CID is the kernel's (vhost-vsock drops a packet whose
 * source is not the guest's own CID), so it is the VM's identity; a CID with
 * no socket is a guest mvirtd did not start, and its connection is closed.
 * With unix:PATH (tests, where the machine has no vsock loopback) it listens
 * there instead and each client first writes its CID as a decimal line.
 * mvirtd builds it on the host with the same compiler (qemu/vsock.ts).
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
#include <limits.h>
#include <linux/vm_sockets.h>

#include "relay.h"

#define AGENT_FD 3

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
 * One step of a direction (both fds are non-blocking): relay_step, then shut
 * the write side down once the read side has ended and the buffer is
 * drained. Returns -1 when the write side is gone (the channel is over).
 */
static int pump(struct dir *d) {
  if (d->done) return 0;
  if (relay_step(d) < 0) return -1;
  if (d->eof && d->len == 0) {
    shutdown(d->to, SHUT_WR);
    d->done = 1;
  }
  return 0;
}

/* Relays between a (the near end) and b (the far end) until both directions have ended. */
static void relay(int a, int b) {
  fcntl(a, F_SETFL, fcntl(a, F_GETFL) | O_NONBLOCK);
  fcntl(b, F_SETFL, fcntl(b, F_GETFL) | O_NONBLOCK);
  static struct dir up, down; /* up: a → b; down: b → a */
  up.from = a, up.to = b;
  down.from = b, down.to = a;
  while (!(up.done && down.done)) {
    struct pollfd p[2] = {{.fd = a}, {.fd = b}};
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
    if (pump(&up) < 0 || pump(&down) < 0) return;
  }
}

/* A decimal number that fits in 32 bits, or -1. */
static long number(const char *s) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (!*s || *end || errno || v > UINT_MAX) return -1;
  return (long)v;
}

/* Tests' stand-in for the peer CID: a decimal line the client writes first. */
static long read_cid_line(int c) {
  char line[16];
  size_t n = 0;
  while (n < sizeof line - 1) {
    ssize_t r = read(c, line + n, 1);
    if (r <= 0) return -1;
    if (line[n] == '\n') break;
    n++;
  }
  line[n] = 0;
  return number(line);
}

/* One guest connection, in its own process: to mvirtd's socket for its CID, then relayed. */
static void serve(int c, long cid, long port, const char *dir) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (cid < 3) exit(0); /* 0-2 are never a guest's: hypervisor, local, host */
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  int n = snprintf(a.sun_path, sizeof a.sun_path, "%s/%ld_%ld", dir, cid, port);
  if (n < 0 || (size_t)n >= sizeof a.sun_path) exit(0);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) exit(0);
  relay(s, c);
  exit(0);
}

static int listen_mode(int argc, char **argv) {
  long port = argc >= 4 ? number(argv[2]) : -1;
  if ((argc != 4 && argc != 5) || port < 0 || (argc == 5 && strncmp(argv[4], "unix:", 5) != 0)) {
    fprintf(stderr, "usage: vsock-connect --listen PORT DIR [unix:PATH]\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGTERM); /* it goes with mvirtd */
  signal(SIGCHLD, SIG_IGN);         /* connections' processes reap themselves */
  const char *dir = argv[3];
  int unix_mode = argc == 5;
  int ls;
  if (unix_mode) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[4] + 5) >= sizeof a.sun_path) {
      fprintf(stderr, "vsock-connect: unix path too long\n");
      return 2;
    }
    strcpy(a.sun_path, argv[4] + 5);
    ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0) die("socket(AF_UNIX)");
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  } else {
    struct sockaddr_vm a = {
        .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned)port};
    ls = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0) die("socket(AF_VSOCK)");
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  }
  if (listen(ls, 64) < 0) die("listen");
  fprintf(stderr, "listening\n");
  for (;;) {
    struct sockaddr_vm peer;
    socklen_t len = sizeof peer;
    int c = accept4(ls, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) continue;
      die("accept");
    }
    pid_t pid = fork();
    if (pid == 0) {
      close(ls);
      serve(c, unix_mode ? read_cid_line(c) : (long)peer.svm_cid, port, dir);
    }
    close(c);
  }
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc >= 2 && strcmp(argv[1], "--listen") == 0) return listen_mode(argc, argv);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 1; /* the agent is already gone */
  if (fcntl(AGENT_FD, F_GETFD) < 0) die("fd 3 (the agent's end)");
  int s = dial(argc, argv);
  fprintf(stderr, "connected\n");
  relay(AGENT_FD, s);
  return 0;
}
