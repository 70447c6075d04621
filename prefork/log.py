"""Operator logs: one line per event, tagged with the process's role (master, worker N gen G).

Every process formats its own records with the one formatter :func:`make_formatter`
gives for ``--log-format``: ``text`` (a line for a person) or ``json`` (one JSON
object per line). A record may carry a ``stack`` (a worker's Python stack, which
the master read from the worker's stack pipe: see ``stacks.py``); it then also
names that worker, whose state it shows.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "prefork"
FORMAT = "%(asctime)s [%(process)d] [%(role)s] %(levelname)s: %(message)s"
LOG_FORMATS = ("text", "json")


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


def rfc3339(timestamp: float) -> str:
    """``2026-12-01T22:41:16.123+00:00``: UTC, milliseconds."""
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
    """The process's log destination: stderr or a file that USR1 reopens."""

    def __init__(self, level: str, path: str | None, log_format: str = "text") -> None:
        self.path = path
        self.format = log_format
        self.logger = logging.getLogger(LOGGER_NAME)
        self.logger.propagate = False
        self.role = RoleFilter()
        self.handler = self._make_handler()
        self.logger.handlers[:] = [self.handler]
        self.logger.setLevel(level.upper())

    def _make_handler(self) -> logging.StreamHandler[Any]:
        handler: logging.StreamHandler[Any] = (
            logging.FileHandler(self.path, encoding="utf-8") if self.path else logging.StreamHandler(sys.stderr)
        )
        handler.setFormatter(make_formatter(self.format))
        handler.addFilter(self.role)
        return handler

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
        old, self.path = self.path, path
        try:
            handler = self._make_handler()
        except OSError:
            self.path = old
            raise
        # Said where the log was until now, so a reader of the old file knows where it went on.
        self.logger.info("logging to %s from now on", path or "stderr")
        self.logger.handlers[:] = [handler]
        self.handler.close()
        self.handler = handler

    def reopen(self) -> None:
        """Reopen the log file (after logrotate moved it); stderr needs nothing."""
        if isinstance(self.handler, logging.FileHandler):
            with self.handler.lock or _NullLock():
                self.handler.close()
                self.handler.stream = self.handler._open()

    def stream_fileno(self) -> int:
        """The descriptor that faulthandler writes tracebacks to."""
        return int(self.handler.stream.fileno())


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
