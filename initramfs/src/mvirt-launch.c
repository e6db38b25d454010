/*
 * mvirt-launch: forks and execs jobs on the agent's behalf.
 *
 * Why: the agent is an ~80 MB Node process, and a Node spawn forks it (libuv).
 * Under TCG the page-table copy and the copy-on-write faults after it are
 * emulated: 8-13 ms a job on a quiet machine, far more under load, the largest
 * part of a `/bin/true` job's round trip (issue 18). This helper is small and
 * static, so its fork is cheap; the agent spawns it once (one stdio pair: Node
 * cannot receive descriptors over a unix socket, so the two talk over the
 * launcher's stdin and stdout) and again if it dies
 * (guest-agent/platform/launcher.ts). Built at image build time
 * (images/helpers.ts) with the C compiler of build-essential.
 *
 * Only the agent talks to it: its requests come on fd 0, an end of a
 * socketpair that Node's spawn made and nobody else holds; nothing is on the
 * file system. A frame it cannot parse is answered as a failed request; a
 * frame too long to be one ends the launcher (exit 2), and the agent starts
 * another. It dies with the agent (EOF on fd 0, PR_SET_PDEATHSIG).
 *
 * Frames both ways: a u32 length (little-endian) and that many bytes.
 *
 *   agent -> launcher
 *     'S' id argc envc, then NUL-terminated: cwd, group, argv[argc], env[envc]
 *         (cwd "": the launcher's; group "": none, else a cgroup.procs file
 *         the job enters before its command runs)
 *     'C' id: the agent has opened the job's pipes; close the launcher's ends
 *   launcher -> agent
 *     'P' id pid stdin stdout stderr: started; the fds are the launcher's
 *         ends of its pipes, which the agent opens as /proc/PID/fd/N
 *     'E' id errno stage: not started; stage 'x': the job's own setup or exec
 *         failed (a spawn error, as Node's), 'l': the launcher could not
 *         (bad request, no pipes or slots, fork failed: spawn it otherwise)
 *     'X' pid status: a job ended (its wait status)
 *   (every number a u32, every stage one byte)
 *
 * A job: forked straight into its group (clone3 with CLONE_INTO_CGROUP on
 * the procs file's folder), or, where that cannot be (not a cgroup, a kernel
 * before 5.7), forked and "0" written into the procs file; either way it is
 * charged there from its first page. Then setsid() (it leads its own
 * process group, as Node's `detached`), chdir, stdio onto its pipes, signals
 * back to their defaults, and execve with a PATH search in the job's own
 * PATH (as libuv's spawn).
 *
 * Why clone3: moving a process into a cgroup (the procs write) takes the
 * cgroup threadgroup lock for writing, which waits for an RCU grace period:
 * ~4 ms of a /bin/true job under TCG when the agent moved each job after
 * its spawn (agent timings, 2026-12-08). A fork into the group takes it for
 * reading only.
 * What failed comes back through a close-on-exec pipe: the launcher waits
 * for its EOF (exec done) or an errno before it answers, as libuv does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/sched.h> /* struct clone_args, CLONE_INTO_CGROUP */

/* argv and env of a job fit in the kernel's ARG_MAX (2 MiB by default) and more. */
#define MAX_FRAME (8u * 1024 * 1024)
/* Jobs whose pipes the agent has not opened yet (each holds 3 fds). */
#define MAX_SLOTS 256
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct slot {
  uint32_t id;
  int fd[3]; /* stdin's write end, stdout's and stderr's read ends */
  int used;
};
static struct slot slots[MAX_SLOTS];

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(unsigned char *p, uint32_t v) {
  p[0] = v, p[1] = v >> 8, p[2] = v >> 16, p[3] = v >> 24;
}

static void write_all(const unsigned char *b, size_t n) {
  while (n > 0) {
    ssize_t w = write(1, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) exit(0); /* the agent is gone */
    b += w, n -= (size_t)w;
  }
}

/* One reply: a type and `n` numbers. */
static void reply(char type, const uint32_t *v, int n, int stage) {
  unsigned char b[4 + 1 + 5 * 4 + 1];
  size_t len = 1 + 4 * (size_t)n + (stage ? 1 : 0);
  put32(b, (uint32_t)len);
  b[4] = (unsigned char)type;
  for (int i = 0; i < n; i++) put32(b + 5 + 4 * i, v[i]);
  if (stage) b[5 + 4 * n] = (unsigned char)stage;
  write_all(b, 4 + len);
}

static void fail(uint32_t id, int err, char stage) {
  uint32_t v[2] = {id, (uint32_t)err};
  reply('E', v, 2, stage);
}

/* In the child: say why, and end. */
static void child_fail(int report) {
  int e = errno;
  ssize_t w;
  do w = write(report, &e, sizeof e);
  while (w < 0 && errno == EINTR);
  _exit(127);
}

/* execve, and a file without a #! line run by /bin/sh (as execvp, and so Node's spawn, does). */
static void exec_file(const char *file, char **argv, char **env) {
  execve(file, argv, env);
  if (errno != ENOEXEC) return;
  size_t n = 0;
  while (argv[n]) n++;
  char **sh = calloc(n + 2, sizeof *sh);
  if (!sh) return;
  sh[0] = "/bin/sh", sh[1] = (char *)file;
  memcpy(sh + 2, argv + 1, n * sizeof *sh); /* argv[1..n-1] and its NULL */
  execve(sh[0], sh, env);
  errno = ENOEXEC;
}

/* execve in each folder of PATH (the job's own), as execvp does. */
static void exec_path(char **argv, char **env) {
  const char *file = argv[0];
  if (!*file) {
    errno = ENOENT;
    return;
  }
  if (strchr(file, '/')) {
    exec_file(file, argv, env);
    return;
  }
  const char *path = DEFAULT_PATH;
  for (char **e = env; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
  int seen_eacces = 0, last = ENOENT;
  for (const char *p = path;; p++) {
    const char *end = strchrnul(p, ':');
    char full[PATH_MAX];
    size_t dl = (size_t)(end - p);
    if (dl + 1 + strlen(file) < sizeof full) {
      if (dl == 0) full[0] = '.', dl = 1; /* an empty entry is the cwd */
      else memcpy(full, p, dl);
      full[dl] = '/';
      strcpy(full + dl + 1, file);
      exec_file(full, argv, env);
      if (errno == EACCES) seen_eacces = 1;
      else if (errno != ENOENT && errno != ENOTDIR) last = errno;
    }
    if (!*end) break;
    p = end;
  }
  errno = seen_eacces ? EACCES : last;
}

/*
 * A fork into the cgroup at `procs`'s folder: the pid, 0 in the child, or
 * -1 where it cannot be (then fork and write `procs`).
 */
static pid_t fork_into(const char *procs) {
  const char *slash = strrchr(procs, '/');
  if (!slash || strcmp(slash, "/cgroup.procs") != 0 || (size_t)(slash - procs) >= PATH_MAX)
    return -1;
  char dir[PATH_MAX];
  memcpy(dir, procs, (size_t)(slash - procs));
  dir[slash - procs] = 0;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.flags = CLONE_INTO_CGROUP;
  a.exit_signal = SIGCHLD;
  a.cgroup = (uint64_t)fd;
  /* No stack given: the child runs on a copy of ours, as after fork(). */
  pid_t pid = (pid_t)syscall(SYS_clone3, &a, sizeof a);
  int e = errno;
  if (pid != 0) close(fd);
  errno = e;
  return pid;
}

static void child(const char *cwd, const char *group, char **argv, char **env, int fds[3][2],
                  int report) {
  sigset_t none;
  sigemptyset(&none);
  for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
  if (setsid() < 0) child_fail(report);
  if (*group) {
    /* As the shell's `echo 0 >"$group"` that did this before (tests' fake groups are plain files). */
    int g = open(group, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (g < 0 || write(g, "0\n", 2) != 2) child_fail(report);
    close(g);
  }
  if (*cwd && chdir(cwd) < 0) child_fail(report);
  /* The pipes are all close-on-exec (and numbered above 2): only these stay. */
  if (dup2(fds[0][0], 0) < 0 || dup2(fds[1][1], 1) < 0 || dup2(fds[2][1], 2) < 0)
    child_fail(report);
  exec_path(argv, env);
  child_fail(report);
}

static void close_slot(struct slot *s) {
  for (int i = 0; i < 3; i++) close(s->fd[i]);
  s->used = 0;
}

/* 'S': parse, fork, wait for the exec, answer. */
static void start(const unsigned char *b, size_t n) {
  if (n < 12) return fail(n >= 4 ? get32(b) : 0, EINVAL, 'l');
  uint32_t id = get32(b), argc = get32(b + 4), envc = get32(b + 8);
  /* Every string is NUL-terminated, so there are at most n - 12 of them. */
  if (argc < 1 || argc > n || envc > n || 2 + (size_t)argc + envc > n - 12)
    return fail(id, EINVAL, 'l');
  size_t count = 2 + (size_t)argc + envc;
  char **str = calloc(count + 2, sizeof *str); /* + the NULLs ending argv and env */
  if (!str) return fail(id, ENOMEM, 'l');
  const char *p = (const char *)b + 12, *end = (const char *)b + n;
  size_t k = 0;
  for (; k < count && p < end; k++) {
    const char *z = memchr(p, 0, (size_t)(end - p));
    if (!z) break;
    str[k + (k >= 2 + argc)] = (char *)p; /* argv's NULL goes between argv and env */
    p = z + 1;
  }
  if (k != count || p != end) {
    free(str);
    return fail(id, EINVAL, 'l');
  }
  char **argv = str + 2, **env = str + 3 + argc;

  struct slot *s = NULL;
  for (int i = 0; i < MAX_SLOTS && !s; i++)
    if (!slots[i].used) s = &slots[i];
  int fds[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}}, rep[2] = {-1, -1};
  int err = 0;
  if (!s) err = EMFILE;
  for (int i = 0; i < 3 && !err; i++)
    if (pipe2(fds[i], O_CLOEXEC) < 0) err = errno;
  if (!err && pipe2(rep, O_CLOEXEC) < 0) err = errno;
  pid_t pid = -1;
  const char *group = str[1];
  if (!err && *group) {
    pid = fork_into(group);
    if (pid >= 0) group = ""; /* in it already */
  }
  if (!err && pid < 0) pid = fork();
  if (pid == 0) {
    close(rep[0]);
    child(str[0], group, argv, env, fds, rep[1]);
  }
  if (!err && pid < 0) err = errno;
  /* Ours: stdin's write end, stdout's and stderr's read ends. */
  int mine[3] = {fds[0][1], fds[1][0], fds[2][0]};
  for (int i = 0; i < 3; i++) close(i == 0 ? fds[i][0] : fds[i][1]);
  close(rep[1]);
  free(str);
  if (err) {
    for (int i = 0; i < 3; i++) close(mine[i]);
    close(rep[0]);
    return fail(id, err, 'l');
  }
  int child_errno = 0;
  ssize_t r;
  do r = read(rep[0], &child_errno, sizeof child_errno);
  while (r < 0 && errno == EINTR);
  close(rep[0]);
  if (r == sizeof child_errno) {
    /* Reaped here: the agent never heard of this pid. */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    for (int i = 0; i < 3; i++) close(mine[i]);
    return fail(id, child_errno, 'x');
  }
  s->id = id, s->used = 1;
  memcpy(s->fd, mine, sizeof mine);
  uint32_t v[5] = {id, (uint32_t)pid, (uint32_t)mine[0], (uint32_t)mine[1], (uint32_t)mine[2]};
  reply('P', v, 5, 0);
}

static void request(const unsigned char *b, size_t n) {
  if (n >= 1 && b[0] == 'S') return start(b + 1, n - 1);
  if (n == 5 && b[0] == 'C') {
    uint32_t id = get32(b + 1);
    for (int i = 0; i < MAX_SLOTS; i++)
      if (slots[i].used && slots[i].id == id) close_slot(&slots[i]);
    return;
  }
  fail(n >= 5 ? get32(b + 1) : 0, EINVAL, 'l');
}

static void reap(int sfd) {
  struct signalfd_siginfo si;
  while (read(sfd, &si, sizeof si) > 0) {
  }
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    uint32_t v[2] = {(uint32_t)pid, (uint32_t)status};
    reply('X', v, 2, 0);
  }
}

int main(void) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 1; /* the agent is already gone */
  signal(SIGPIPE, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    perror("mvirt-launch: signalfd");
    return 1;
  }
  size_t cap = 64 * 1024, len = 0;
  unsigned char *buf = malloc(cap);
  if (!buf) return 1;
  for (;;) {
    struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      perror("mvirt-launch: poll");
      return 1;
    }
    if (p[1].revents) reap(sfd);
    if (!p[0].revents) continue;
    if (len == cap) {
      unsigned char *more = realloc(buf, cap * 2);
      if (!more) return 1;
      buf = more, cap *= 2;
    }
    ssize_t r = read(0, buf + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0; /* the agent is gone */
    len += (size_t)r;
    size_t off = 0;
    while (len - off >= 4) {
      uint32_t n = get32(buf + off);
      if (n > MAX_FRAME) {
        fprintf(stderr, "mvirt-launch: a frame of %u bytes: not the agent's\n", n);
        return 2;
      }
      if (len - off - 4 < n) break;
      request(buf + off + 4, n);
      off += 4 + n;
    }
    memmove(buf, buf + off, len - off);
    len -= off;
  }
}
