"""A terminal for a program under test (test/support/pty.ts drives it).

    python3 pty-driver.py ROWS COLS -- PROG [ARG...]

Node cannot open a pseudo-terminal, so this opens one of ROWS x COLS, runs
PROG on it as a session leader with the pty as its controlling terminal, and
relays its own stdin to the pty (keys) and the pty to its stdout (the
screen). Fd 3 carries control lines: "pid PID" out (PROG's), "resize ROWS
COLS" in (the kernel then sends SIGWINCH to PROG's foreground process group;
answered "resized"), and at the end "exit CODE" and "termios restored|changed" out (whether PROG left
the terminal's modes as it found them). Exits with PROG's exit code.
"""
import fcntl
import os
import select
import struct
import sys
import termios


def winsize(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def main():
    rows, cols = int(sys.argv[1]), int(sys.argv[2])
    assert sys.argv[3] == "--"
    prog = sys.argv[4:]
    master, slave = os.openpty()
    winsize(master, rows, cols)
    before = termios.tcgetattr(master)
    pid = os.fork()
    if pid == 0:
        os.close(master)
        os.close(3)
        os.login_tty(slave)
        os.execvp(prog[0], prog)
    os.write(3, b"pid %d\n" % pid)
    # Only PROG holds the slave now: reading the master fails (EIO) once it is gone.
    os.close(slave)
    watch = {master, 0, 3}
    pending = b""
    while master in watch:
        for fd in select.select(list(watch), [], [])[0]:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                watch.discard(fd)
            elif fd == master:
                os.write(1, data)
            elif fd == 0:
                os.write(master, data)
            else:
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    word = line.split()
                    if word and word[0] == b"resize":
                        winsize(master, int(word[1]), int(word[2]))
                        os.write(3, b"resized\n")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    after = termios.tcgetattr(master)
    os.write(3, b"exit %d\ntermios %s\n" % (code, b"restored" if after == before else b"changed"))
    sys.exit(code if code >= 0 else 128 - code)


main()
