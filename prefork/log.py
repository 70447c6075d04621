"""Operator logs: one line per event, tagged with the process's role (master, worker N gen G)."""

from __future__ import annotations

import logging
import sys
from typing import Any

LOGGER_NAME = "prefork"
FORMAT = "%(asctime)s [%(process)d] [%(role)s] %(levelname)s: %(message)s"


class RoleFilter(logging.Filter):
    """Stamps every record with who wrote it; a worker changes the role after fork."""

    def __init__(self, role: str = "master") -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


class Log:
    """The process's log destination: stderr or a file that USR1 reopens."""

    def __init__(self, level: str, path: str | None) -> None:
        self.path = path
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
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(self.role)
        return handler

    def set_level(self, level: str) -> None:
        self.logger.setLevel(level.upper())

    def set_role(self, role: str) -> None:
        self.role.role = role

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
