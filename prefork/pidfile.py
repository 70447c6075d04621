"""The master's pid file: locked for the master's life, and read safely by control commands.

The master opens the file without truncating it (``O_NOFOLLOW``, ``O_NONBLOCK``:
a symlink, FIFO, device or hard link at the path is refused), takes an
exclusive ``flock`` on it and only then rewrites it in place. So a second
server given the same file finds it locked and refuses to start, naming the
running pid, while a stale file (its master died: the kernel dropped the lock)
is simply taken over. Between truncating and writing a reader may find the
file empty: readers retry then. A USR2 upgrade renames the locked file to
``FILE.oldbin`` (the lock stays with the old master's descriptor) and the new
master locks a fresh ``FILE``; a failed upgrade renames ``FILE.oldbin`` back.

Readers (``prefork status``/``stop``/``reload``, ``prefork check``) never block
and never read more than a pid's worth: anything but a positive integer in a
regular file is "no server running".
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import stat
import time

from .errors import EXIT_BIND, ConfigError, NotRunningError, PreforkError
from .log import file_kind, open_regular

log = logging.getLogger("prefork")

PID_MAX = 1 << 22  # the kernel's limit (pid_max) on 64-bit Linux
MAX_TEXT = 32  # more than this in a pid file is not a pid
EMPTY_RETRY = 0.5  # seconds a reader waits for a master that has just truncated the file
PID_TEXT = re.compile(rb"\s*([1-9][0-9]{0,9})\s*")


class PidfileLocked(PreforkError):
    """Another live server holds the pid file."""

    exit_status = EXIT_BIND


class Pidfile:
    """The pid file a master holds (locked) while it runs."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid = 0
        self.fd = -1

    def write(self, pid: int) -> None:
        """Lock the file and write ``pid`` in it; PidfileLocked if a live server holds it, OSError if unusable."""
        for _ in range(10):  # a stopping server may unlink the file between our open and our lock
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise PidfileLocked(f"pid file {self.path} is held by a running server (pid {holder}); "
                                    "stop it first or give another --pid") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)
        else:
            raise OSError(0, "it keeps being replaced", self.path)
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o644)  # readable by the control commands of any user, whatever the umask
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)
        self.fd, self.pid = fd, pid

    def fds(self) -> list[int]:
        """Descriptors a forked worker must close (it must not write the pid file, nor keep its lock)."""
        return [self.fd] if self.fd >= 0 else []

    def rename(self, new_path: str) -> None:
        """Move the file aside (``FILE.oldbin`` during a binary upgrade), keeping its lock; logged if it fails."""
        if not _same_file(self.fd, self.path):
            log.error("pid file %s is no longer ours; not moving it to %s", self.path, new_path)
            return
        try:
            os.rename(self.path, new_path)
        except OSError as exc:
            log.error("cannot move the pid file %s to %s: %s", self.path, new_path, exc.strerror)
            return
        self.path = new_path

    def remove(self) -> None:
        """Remove the file if it is still ours (an upgraded master may own the name now), then unlock."""
        if self.fd < 0:
            return
        if _same_file(self.fd, self.path):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = -1


def claim(path: str, pid: int) -> Pidfile:
    """The master's pid file, locked and holding ``pid``; PidfileLocked if a live server holds it, ConfigError if
    it cannot be written (the master then has no pid file: nothing of another's to remove at exit)."""
    pidfile = Pidfile(path)
    try:
        pidfile.write(pid)
    except OSError as exc:
        raise ConfigError(f"pid: cannot write {path!r}: {exc.strerror}") from None
    return pidfile


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> str:
    """The pid written in a locked pid file, as text ("unknown" if its master is still writing it)."""
    deadline = time.monotonic() + EMPTY_RETRY
    while True:
        match = PID_TEXT.fullmatch(os.pread(fd, MAX_TEXT + 1, 0))
        if match or time.monotonic() >= deadline:
            return match.group(1).decode() if match else "unknown"
        time.sleep(0.02)


def pid_in_file(path: str) -> int:
    """The pid a pid file names; NotRunningError (one line saying why) for anything else.

    Never blocks (``O_NONBLOCK``: a FIFO is refused, not waited on) and never reads more than a pid.
    """
    deadline = time.monotonic() + EMPTY_RETRY
    while True:
        data = _read_some(path)
        if data.strip() or time.monotonic() >= deadline:
            break
        time.sleep(0.02)  # a master has truncated the file and is about to write its pid
    match = PID_TEXT.fullmatch(data) if len(data) <= MAX_TEXT else None
    if match is None or int(match.group(1)) > PID_MAX:
        shown = data[:MAX_TEXT].decode("ascii", "backslashreplace")
        raise NotRunningError(f"no server running: pid file {path} holds no pid ({shown!r})")
    return int(match.group(1))


def _read_some(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotRunningError(f"no server running: pid file {path} does not exist") from None
    except OSError as exc:
        why = exc.strerror
        try:
            why = f"it is {file_kind(os.lstat(path).st_mode)}" if os.path.islink(path) else why
        except OSError:
            pass
        raise NotRunningError(f"no server running: cannot read pid file {path}: {why}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRunningError(f"no server running: pid file {path} is {file_kind(mode)}, not a regular file")
        return os.read(fd, MAX_TEXT + 1)
    except OSError as exc:
        raise NotRunningError(f"no server running: cannot read pid file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_pid(path: str) -> int | None:
    """The pid in ``path``, or None if the file is missing, unreadable or holds no pid."""
    try:
        return pid_in_file(path)
    except NotRunningError:
        return None
