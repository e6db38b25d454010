/*
 * image-exec: run a job inside an imported container image's root.
 *
 *   image-exec ROOT UID GID CWD ARGV0 [ARGS...]
 *
 * The agent keeps running from the µOS; a job of an imported image (images/
 * README.md) is spawned through this helper, which chroots into ROOT (the
 * writable overlay rcS made over the image disk, with /proc, /sys, /dev and
 * /tmp mounted inside), changes to CWD there, drops to UID:GID (the image
 * config's User, resolved at import) and execs ARGV0, looked up in the job's
 * PATH inside the image. Node's spawn has no chroot, and busybox chroot
 * cannot change the user, hence a helper. On failure it says why on stderr
 * and exits 127 (not found) or 126 (cannot run), as a shell does. Static,
 * built at image build time (images/helpers.ts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long number(const char *s, const char *what) {
  char *end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') {
    fprintf(stderr, "image-exec: %s \"%s\" is not a number\n", what, s);
    exit(126);
  }
  return v;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: image-exec ROOT UID GID CWD ARGV0 [ARGS...]\n");
    return 126;
  }
  uid_t uid = (uid_t)number(argv[2], "uid");
  gid_t gid = (gid_t)number(argv[3], "gid");
  if (chroot(argv[1]) != 0 || chdir("/") != 0) {
    fprintf(stderr, "image-exec: cannot enter the image root %s: %s\n", argv[1], strerror(errno));
    return 126;
  }
  if (chdir(argv[4]) != 0) {
    fprintf(stderr, "image-exec: working directory %s: %s\n", argv[4], strerror(errno));
    return 126;
  }
  if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
    fprintf(stderr, "image-exec: cannot become %lu:%lu: %s\n", (unsigned long)uid,
            (unsigned long)gid, strerror(errno));
    return 126;
  }
  execvp(argv[5], &argv[5]);
  int e = errno;
  fprintf(stderr, "image-exec: %s: %s\n", argv[5], strerror(e));
  return e == ENOENT ? 127 : 126;
}
