/*
 * mvirt-pty: run a job under a pseudo-terminal (job.run {tty: true}).
 *
 *   mvirt-pty [--cols N] [--rows N] [--size-file PATH] -- CMD [ARG...]
 *
 * Why a C program: the µOS's busybox has no `script`, and Node (the agent)
 * cannot open a pty or give a child a controlling terminal without a native
 * addon, which would have to be built against Node's headers and embedded in
 * the agent's single executable. This helper is the job's argv wrapper
 * instead (the agent runs `mvirt-pty … -- CMD` through the same spawn path
 * as any job, whoever does the fork), static, built at image build time
 * (images/helpers.ts) with the C compiler of build-essential.
 *
 * It opens a pty, forks CMD as a session leader with the pty's slave as its
 * controlling terminal and stdin/stdout/stderr, and relays its own stdin to
 * the master (keystrokes: the slave's line discipline turns Ctrl-C into
 * SIGINT for the terminal's foreground process group) and the master to its
 * own stdout (stdout and stderr of the job, merged as on any terminal).
 *
 * Window size: --cols/--rows at the start; on SIGWINCH it reads "COLS ROWS"
 * from --size-file (the agent writes the file, then signals) and sets it on
 * the master, and the kernel tells the foreground process group (SIGWINCH).
 *
 * Signals: CMD runs in a session of its own, so a signal the agent sends to
 * the job's process group reaches only this helper. It passes TERM, INT,
 * HUP, QUIT, USR1, USR2 and CONT on to every process of CMD's session (read
 * from /proc), as a plain job's process group would get them. SIGKILL cannot
 * be caught: CMD dies with the helper (PR_SET_PDEATHSIG), and the kernel
 * hangs up the terminal's foreground process group when CMD, the session
 * leader, is gone.
 *
 * Exit: once CMD has ended (and what it wrote is relayed), the helper ends
 * the same way: CMD's exit code, or the signal that killed CMD, raised on
 * itself (without a core dump). CMD that cannot be executed: a message on
 * stderr and exit 127 (not found) or 126 (not executable), as a shell does.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "relay.h"

/* The protocol's bounds (protocol/tty.ts TTY_MAX_COLS / TTY_MAX_ROWS). */
#define MAX_COLS 4096
#define MAX_ROWS 4096

static const int FORWARDED[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT};
#define NFORWARDED (sizeof FORWARDED / sizeof FORWARDED[0])

static void usage(void) {
  fprintf(stderr, "usage: mvirt-pty [--cols N] [--rows N] [--size-file PATH] -- CMD [ARG...]\n");
  exit(2);
}

static unsigned short number(const char *s, unsigned long max) {
  char *end;
  errno = 0;
  unsigned long n = strtoul(s, &end, 10);
  if (errno || *end || end == s || n < 1 || n > max) usage();
  return (unsigned short)n;
}

/* "COLS ROWS" from the size file into ws; 0 when it holds no valid size. */
static int read_size(const char *file, struct winsize *ws) {
  char text[64];
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return 0;
  text[n] = 0;
  unsigned long cols, rows;
  if (sscanf(text, "%lu %lu", &cols, &rows) != 2) return 0;
  if (cols < 1 || cols > MAX_COLS || rows < 1 || rows > MAX_ROWS) return 0;
  ws->ws_col = (unsigned short)cols;
  ws->ws_row = (unsigned short)rows;
  return 1;
}

/* The session id of a process (field 6 of /proc/PID/stat), or -1. */
static pid_t session_of(pid_t pid) {
  char path[64], text[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return -1;
  text[n] = 0;
  /* The command name (field 2) may hold spaces and ')': skip to its last ')'. */
  char *p = strrchr(text, ')');
  char state;
  int ppid, pgrp, sid;
  if (!p || sscanf(p + 1, " %c %d %d %d", &state, &ppid, &pgrp, &sid) != 4) return -1;
  return sid;
}

/* Send sig to every process of CMD's session (its process group when /proc cannot be read). */
static void signal_session(pid_t sid, int sig) {
  kill(-sid, sig);
  DIR *d = opendir("/proc");
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    pid_t pid = (pid_t)atoi(e->d_name);
    if (session_of(pid) == sid) kill(pid, sig);
  }
  closedir(d);
}

/*
 * Read into an empty buffer, write out what is buffered (non-blocking fds).
 * A read of 0 is stdin's end; EIO on the master: no process holds the slave
 * any more. A write that fails for good: the reader is gone, so drop what is
 * buffered and keep serving the other way.
 */
static void pump(struct dir *d) {
  if (relay_step(d) < 0) {
    d->len = 0;
    d->eof = 1;
  }
}

/* The last output once CMD has ended: what the master still holds, written in full. */
static void drain(struct dir *out) {
  for (int i = 0; i < 4096; i++) {
    if (out->len == 0) {
      ssize_t n = read(out->from, out->buf, BUF);
      if (n <= 0) return;
      out->len = (size_t)n;
      out->off = 0;
    }
    struct pollfd p = {.fd = out->to, .events = POLLOUT};
    if (poll(&p, 1, -1) < 0 && errno != EINTR) return;
    ssize_t n = write(out->to, out->buf + out->off, out->len);
    if (n > 0) {
      out->off += (size_t)n;
      out->len -= (size_t)n;
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return;
    }
  }
}

static void end_like(int status) {
  if (WIFEXITED(status)) exit(WEXITSTATUS(status));
  int sig = WTERMSIG(status);
  struct rlimit none = {0, 0};
  setrlimit(RLIMIT_CORE, &none);
  signal(sig, SIG_DFL);
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, sig);
  sigprocmask(SIG_UNBLOCK, &s, NULL);
  raise(sig);
  exit(128 + sig); /* a signal whose default is not to end a process */
}

int main(int argc, char **argv) {
  struct winsize ws = {.ws_row = 24, .ws_col = 80};
  const char *size_file = NULL;
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    if (i + 1 >= argc) usage();
    if (strcmp(argv[i], "--cols") == 0)
      ws.ws_col = number(argv[++i], MAX_COLS);
    else if (strcmp(argv[i], "--rows") == 0)
      ws.ws_row = number(argv[++i], MAX_ROWS);
    else if (strcmp(argv[i], "--size-file") == 0)
      size_file = argv[++i];
    else
      usage();
  }
  if (i + 1 >= argc) usage();
  char **cmd = argv + i + 1;

  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) {
    fprintf(stderr, "mvirt-pty: cannot open a pseudo-terminal: %s\n", strerror(errno));
    return 126;
  }
  const char *slave_name = ptsname(master);
  if (!slave_name) {
    fprintf(stderr, "mvirt-pty: ptsname: %s\n", strerror(errno));
    return 126;
  }
  ioctl(master, TIOCSWINSZ, &ws);

  /* Blocked before the fork (the child unblocks them before its exec), read from a signalfd. */
  sigset_t mask, old;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGWINCH);
  for (size_t k = 0; k < NFORWARDED; k++) sigaddset(&mask, FORWARDED[k]);
  sigprocmask(SIG_BLOCK, &mask, &old);
  signal(SIGPIPE, SIG_IGN);

  /* The child says why its exec failed here (closed by a successful exec). */
  int report[2];
  if (pipe2(report, O_CLOEXEC) < 0) {
    fprintf(stderr, "mvirt-pty: pipe: %s\n", strerror(errno));
    return 126;
  }
  pid_t parent = getpid();
  pid_t child = fork();
  if (child < 0) {
    fprintf(stderr, "mvirt-pty: fork: %s\n", strerror(errno));
    return 126;
  }
  if (child == 0) {
    close(report[0]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    setsid();
    /* Opened by a session leader without a terminal: it becomes the controlling one. */
    int slave = open(slave_name, O_RDWR);
    int err = errno;
    if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) {
      if (slave >= 0) err = errno;
      if (write(report[1], &err, sizeof err) < 0) _exit(126);
      _exit(126);
    }
    dup2(slave, 0);
    dup2(slave, 1);
    dup2(slave, 2);
    if (slave > 2) close(slave);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    /* A terminal without TERM confuses programs that draw (less, vi, top). */
    setenv("TERM", "xterm", 0);
    execvp(cmd[0], cmd);
    err = errno;
    if (write(report[1], &err, sizeof err) < 0) _exit(127);
    _exit(err == ENOENT ? 127 : 126);
  }
  close(report[1]);
  int err = 0;
  ssize_t got;
  do got = read(report[0], &err, sizeof err);
  while (got < 0 && errno == EINTR);
  close(report[0]);
  if (got == (ssize_t)sizeof err) {
    fprintf(stderr, "mvirt-pty: %s: %s\n", cmd[0], strerror(err));
    int status;
    waitpid(child, &status, 0);
    return err == ENOENT ? 127 : 126;
  }

  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    fprintf(stderr, "mvirt-pty: signalfd: %s\n", strerror(errno));
    kill(child, SIGKILL);
    return 126;
  }
  fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
  static struct dir in, out; /* in: stdin → master; out: master → stdout */
  in.from = 0, in.to = master;
  out.from = master, out.to = 1;

  for (;;) {
    struct pollfd p[4] = {{.fd = sfd, .events = POLLIN}, {.fd = -1}, {.fd = -1}, {.fd = -1}};
    /* Read only into an empty buffer; wait to write only while one is full. */
    if (!in.eof) {
      if (in.len == 0)
        p[1] = (struct pollfd){.fd = 0, .events = POLLIN};
      else
        p[1] = (struct pollfd){.fd = master, .events = POLLOUT};
    }
    if (!out.eof) {
      if (out.len == 0)
        p[2] = (struct pollfd){.fd = master, .events = POLLIN};
      else
        p[3] = (struct pollfd){.fd = 1, .events = POLLOUT};
    }
    if (poll(p, 4, -1) < 0 && errno != EINTR) {
      fprintf(stderr, "mvirt-pty: poll: %s\n", strerror(errno));
      kill(child, SIGKILL);
      return 126;
    }
    if (p[1].revents) pump(&in);
    if (p[2].revents || p[3].revents) pump(&out);
    if (!(p[0].revents & POLLIN)) continue;
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
      int sig = (int)si.ssi_signo;
      if (sig == SIGWINCH) {
        if (size_file && read_size(size_file, &ws)) ioctl(master, TIOCSWINSZ, &ws);
      } else if (sig != SIGCHLD) {
        signal_session(child, sig);
      } else {
        int status;
        if (waitpid(child, &status, WNOHANG) == child) {
          fcntl(1, F_SETFL, fcntl(1, F_GETFL) & ~O_NONBLOCK);
          drain(&out);
          end_like(status);
        }
      }
    }
  }
}
