"""Operator logs: one line per event, tagged with the process's role (master, worker N gen G).

Only the master ever opens the log file, and only safely: ``O_NOFOLLOW`` and
``O_NONBLOCK``, and it must then be a regular file with one link (a symlink, a
FIFO, a device or a hard link at the path is refused and never blocked on).
Workers, which may run as a less-privileged ``--user``, never hold the file:
they write each record, whole, into a pipe that the master reads in its loop
and copies to the file it has open now (logging to stderr, workers write
there themselves). So a rotation (USR1) or a changed
``log_file`` (HUP) is the master's business alone: nothing is ever chowned, the
file may stay root's, and the workers' user can neither follow a symlink
through it nor truncate it. Records up to the pipe's atomic size (4096 bytes)
never interleave; a longer traceback written while another worker logs may.

The ``--wsgi`` access log is opened the same way, by the master, once per
generation (:class:`AccessLogFile`): its workers inherit the descriptor and
write their lines to it themselves.

Every process formats its own records with the one formatter :func:`make_formatter`
gives for ``--log-format``: ``text`` (a line for a person) or ``json`` (one JSON
object per line). A record may carry a ``stack`` (a worker's Python stack, which
the master read from the worker's stack pipe: see ``stacks.py``); it then also
names that worker, whose state it shows.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import sys
from typing import Any, TextIO

LOGGER_NAME = "prefork"
FORMAT = "%(asctime)s [%(process)d] [%(role)s] %(levelname)s: %(message)s"
LOG_FORMATS = ("text", "json")
PIPE_SIZE = 1 << 20  # room for bursts while the master is busy elsewhere (the unprivileged maximum)
DRAIN_CHUNK = 65536


class RoleFilter(logging.Filter):
    """Stamps every record with who wrote it; a worker changes the role after fork."""

    def __init__(self, role: str = "master") -> None:
        super().__init__()
        self.role = role
        self.worker: int | None = None  # a worker's index and generation, None in the master
        self.generation: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        record.worker, record.generation = self.worker, self.generation
        return True


def file_kind(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: str, flags: int, mode: int = 0o666) -> int:
    """Open ``path`` without following a symlink or blocking; refuse all but a regular file with one link.

    The OSError raised has a ``strerror`` that says what was found instead.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a symlink; a FIFO nobody reads
            try:
                found = file_kind(os.lstat(path).st_mode)
            except OSError:
                raise exc from None
            raise OSError(exc.errno, f"it is {found}, not a regular file (refused)", path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EPERM, f"it is {file_kind(st.st_mode)}, not a regular file (refused)", path)
        if st.st_nlink != 1:
            raise OSError(errno.EPERM, f"it has {st.st_nlink} hard links (refused: a regular file with one link)",
                          path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_log_file(path: str) -> int:
    """The log file's descriptor, opened for appending (created with 0666 less the umask)."""
    return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def open_access_log(path: str) -> int:
    """An ``--access-log`` file's descriptor, opened for appending as the log file is (created 0644 less the
    umask): by the master for a generation's workers, and by a worker itself after logrotate moved it."""
    return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class AccessLogFile:
    """The ``--access-log`` file the master opened for one generation; its workers inherit the descriptor.

    So the file may stay root's in a directory only root can write, as the log file
    may: the workers' user never needs to create it (see http/accesslog.py for how
    a worker follows a rotation). OSError if it cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = open_access_log(path)

    def reopen(self) -> None:
        """USR1: open the path again (logrotate moved the file); on failure keep the old one and say why."""
        try:
            fd = open_access_log(self.path)
        except OSError as exc:
            logging.getLogger(LOGGER_NAME).error(
                "cannot reopen the access log %s: %s; workers forked from now on get the file opened before",
                self.path, exc.strerror or exc)
            return
        os.close(self.fd)
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Destination:
    """Where this process's records end up: a log file's descriptor, or stderr."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fd = open_log_file(path) if path else -1

    def write(self, data: bytes) -> None:
        if self.fd >= 0:
            write_all(self.fd, data)
        else:
            stream: TextIO = sys.stderr
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()

    def fileno(self) -> int:
        return self.fd if self.fd >= 0 else sys.stderr.fileno()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RecordHandler(logging.Handler):
    """Formats a record and writes it in one piece, through ``write`` (a Log's)."""

    def __init__(self, log_: Log) -> None:
        super().__init__()
        self.log = log_

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            self.log.write_record(data)
        except Exception:
            self.handleError(record)


def rfc3339(timestamp: float) -> str:
    """``2026-12-01T22:41:16.123+00:00``: UTC, milliseconds."""
    from datetime import UTC, datetime  # only for JSON (logs, access logs): a plain master does not load it

    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """The line a person reads; a worker's stack follows on the lines after it."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        stack = getattr(record, "stack", None)
        return f"{line}\n{stack.rstrip()}" if stack else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, pid, role, worker, generation, message,
    exc (a traceback) and stack (a worker's Python stack), the last four only where they apply."""

    def __init__(self) -> None:
        super().__init__()
        import json  # only with --log-format json: a plain master does not load it

        self.dumps = json.dumps

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        stack_of = fields.get("stack_of")  # (pid, index, generation) of the worker whose stack it is
        entry: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname.lower()}
        if stack_of is not None:
            entry.update(pid=stack_of[0], role="worker", worker=stack_of[1], generation=stack_of[2])
        elif fields.get("worker") is not None:
            entry.update(pid=record.process, role="worker", worker=fields["worker"], generation=fields["generation"])
        else:
            entry.update(pid=record.process, role="master")
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if fields.get("stack"):
            entry["stack"] = fields["stack"]
        return self.dumps(entry, ensure_ascii=False, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter every process (master and workers) uses for ``--log-format``."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


class Log:
    """The process's log: in the master, a file (or stderr) plus the workers' pipe; in a worker, the pipe."""

    def __init__(self, level: str, path: str | None, log_format: str = "text") -> None:
        self.format = log_format
        self.logger = logging.getLogger(LOGGER_NAME)
        self.logger.propagate = False
        self.destination = Destination(path)
        self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.pipe_r, False)
        try:
            fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a lower pipe-max-size: the default 64 KiB still works
        self.in_worker = False
        self.role = RoleFilter()
        self.handler = RecordHandler(self)
        self.handler.setFormatter(make_formatter(log_format))
        self.handler.addFilter(self.role)
        self.logger.handlers[:] = [self.handler]
        self.logger.setLevel(level.upper())

    @property
    def path(self) -> str | None:
        return self.destination.path

    def write_record(self, data: bytes) -> None:
        if self.in_worker and self.pipe_w >= 0:
            write_all(self.pipe_w, data)  # one write: whole, up to the pipe's atomic size
        elif self.in_worker:
            self.destination.write(data)  # stderr, shared with the master: no path, nothing to protect
        else:
            self.drain_workers()  # what workers wrote before this goes first
            self.destination.write(data)

    def drain_workers(self) -> None:
        """Copy what the workers wrote to the log (the master's loop calls this when the pipe is readable)."""
        for _ in range(16):  # bounded: the loop has other work; it comes back while the pipe is readable
            try:
                data = os.read(self.pipe_r, DRAIN_CHUNK)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            try:
                self.destination.write(data)
            except OSError:
                return  # a full disk, say: the lines are lost, never the master (its own line reports it)
            if len(data) < DRAIN_CHUNK:
                return

    def enter_worker(self) -> None:
        """In a worker, right after fork: log through the master's pipe, drop our copy of the file.

        Logging to stderr, a worker writes there itself, as the master does: the master
        never has to carry the workers' lines to a stream that may make it wait (a
        terminal, journald).
        """
        self.in_worker = True
        os.close(self.pipe_r)
        if self.destination.fd >= 0:
            self.destination.close()
        else:
            os.close(self.pipe_w)
            self.pipe_w = -1

    def set_level(self, level: str) -> None:
        self.logger.setLevel(level.upper())

    def set_role(self, role: str) -> None:
        self.role.role = role

    def set_worker(self, index: int, generation: int) -> None:
        """In a worker after fork: its records name it."""
        self.role.role = f"worker {index} gen {generation}"
        self.role.worker, self.role.generation = index, generation

    def use(self, path: str | None) -> None:
        """Log to ``path`` (None: stderr) from now on; OSError if it cannot be opened, and nothing changes."""
        if path == self.path:
            self.reopen()
            return
        new = Destination(path)
        # Said where the log was until now, so a reader of the old file knows where it went on.
        self.logger.info("logging to %s from now on", path or "stderr")
        old, self.destination = self.destination, new
        old.close()

    def reopen(self) -> None:
        """Reopen the log file (after logrotate moved it); on failure keep the old one and say why there.

        A worker has nothing to reopen: it writes into the master's pipe.
        """
        if self.in_worker or self.path is None:
            return
        try:
            new = Destination(self.path)
        except OSError as exc:
            self.logger.error("cannot reopen the log file %s: %s; still writing to the file opened before",
                              self.path, exc.strerror or exc)
            return
        self.drain_workers()
        old, self.destination = self.destination, new
        old.close()

    def stream_fileno(self) -> int:
        """The descriptor that faulthandler writes tracebacks to."""
        return self.pipe_w if self.in_worker and self.pipe_w >= 0 else self.destination.fileno()

