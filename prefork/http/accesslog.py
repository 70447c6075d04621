"""The access log: one line per request, in gunicorn's ``%(atom)s`` format (Apache combined by default).

Atoms: h remote address, l "-", u remote user, t time [10/Oct/2000:13:55:36 +0000],
r request line, m method, U path, q query, H protocol, s status, B body bytes,
b body bytes or "-", f referer, a user agent, T seconds, M milliseconds,
D microseconds, L seconds with decimals, p pid, {name}i request header,
{name}o response header, {key}e environ value.

With ``--log-format json`` each line is instead one JSON object (:func:`json_line`):
time (RFC 3339), remote_addr, method, path, query, protocol, status, bytes,
duration (seconds), referer, user_agent, pid; the format string is not used.

Each line is one ``write()`` to a file opened with O_APPEND, so lines from all
workers interleave whole. The master opens the file, once per generation and
before any ``--user`` (log.AccessLogFile), and a worker writes to the descriptor
it inherited: the workers' user never needs to create it. When the path names
another file (logrotate moved it; checked at most once a second), the worker
opens it itself, as the master would (never through a symlink): if its user
cannot, it says so once and goes on writing to the file it has.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..log import open_access_log, rfc3339
from .response import Exchange

log = logging.getLogger("prefork")


class Atoms:
    """The values of one request's line, computed only for the atoms the format names."""

    def __init__(self, environ: dict[str, Any], exchange: Exchange, started: float, finished: float) -> None:
        self.environ = environ
        self.exchange = exchange
        self.started = started
        self.elapsed = finished - started

    def __getitem__(self, key: str) -> str:
        environ = self.environ
        if key.startswith("{") and "}" in key:
            name, _, kind = key[1:].partition("}")
            return self.named(name, kind)
        simple: dict[str, Callable[[], str]] = {
            "h": lambda: environ.get("REMOTE_ADDR") or "-",
            "l": lambda: "-",
            "u": lambda: environ.get("REMOTE_USER") or "-",
            "t": lambda: time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(self.started)),
            "r": lambda: f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            "m": lambda: environ["REQUEST_METHOD"],
            "U": lambda: environ["PATH_INFO"],
            "q": lambda: environ["QUERY_STRING"],
            "H": lambda: environ["SERVER_PROTOCOL"],
            "s": lambda: str(self.exchange.code or "-"),
            "B": lambda: str(self.exchange.sent),
            "b": lambda: str(self.exchange.sent or "-"),
            "f": lambda: environ.get("HTTP_REFERER", "-"),
            "a": lambda: environ.get("HTTP_USER_AGENT", "-"),
            "T": lambda: str(int(self.elapsed)),
            "M": lambda: str(int(self.elapsed * 1000)),
            "D": lambda: str(int(self.elapsed * 1_000_000)),
            "L": lambda: f"{self.elapsed:.6f}",
            "p": lambda: f"<{os.getpid()}>",
        }
        atom = simple.get(key)
        return atom() if atom is not None else "-"

    def named(self, name: str, kind: str) -> str:
        if kind == "i":
            return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), "-"))
        if kind == "o":
            lower = name.lower()
            return next((v for k, v in self.exchange.headers if k.lower() == lower), "-")
        if kind == "e":
            return str(self.environ.get(name, "-"))
        return "-"


def json_line(environ: dict[str, Any], exchange: Exchange, started: float, finished: float) -> str:
    """One request as a JSON object (escaped whatever the client sent)."""
    import json  # only with --log-format json: a --wsgi worker otherwise does without it (test_startup)

    return json.dumps({
        "time": rfc3339(started), "remote_addr": environ.get("REMOTE_ADDR") or None,
        "method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"], "query": environ["QUERY_STRING"],
        "protocol": environ["SERVER_PROTOCOL"], "status": exchange.code or None, "bytes": exchange.sent,
        "duration": round(finished - started, 6), "referer": environ.get("HTTP_REFERER"),
        "user_agent": environ.get("HTTP_USER_AGENT"), "pid": os.getpid(),
    }, ensure_ascii=False)


class AccessLog:
    """Where lines go: a file (``fd``: the master's, inherited; reopened after rotation) or stdout (``-``).

    Without ``fd`` (a handler not bound to a worker) the file is opened at the first line.
    """

    def __init__(self, path: str, line_format: str, as_json: bool = False, fd: int = -1) -> None:
        self.path = path
        self.format = line_format
        self.as_json = as_json
        self.fd = fd
        self.inode = (0, 0)
        if fd != -1:
            info = os.fstat(fd)
            self.inode = (info.st_dev, info.st_ino)
        self.checked = 0.0
        self.lock = threading.Lock()  # threads (--threads) must not reopen the file at once
        self.failure: str | None = None  # why the last open failed, said once

    def write(self, environ: dict[str, Any], exchange: Exchange, started: float) -> None:
        finished = time.time()
        line = (json_line(environ, exchange, started, finished) if self.as_json
                else self.format % Atoms(environ, exchange, started, finished))
        data = (line.replace("\n", "\\n") + "\n").encode("utf-8", "replace")
        try:
            os.write(self.target(), data)
        except OSError:
            pass  # a full disk must not fail the request

    def target(self) -> int:
        if self.path == "-":
            return 1
        now = time.monotonic()
        if self.fd == -1 or now - self.checked >= 1.0:
            with self.lock:
                if self.fd == -1 or now - self.checked >= 1.0:
                    self.checked = now
                    self.try_reopen()
        return self.fd

    def try_reopen(self) -> None:
        """Reopen if moved; a failure is logged once (until it changes), and the lines go to the old file, if any."""
        try:
            self.reopen_if_moved()
        except OSError as exc:
            why = exc.strerror or str(exc)
            if why != self.failure:
                self.failure = why
                log.error("cannot open the access log %s as uid %d: %s%s", self.path, os.geteuid(), why,
                          "; requests are served without it" if self.fd == -1 else "; writing to the old file")
            return
        self.failure = None

    def reopen_if_moved(self) -> None:
        """Open the path as this process if it names another file than ours (or none: moved away)."""
        try:
            info = os.stat(self.path)
            current = (info.st_dev, info.st_ino)
        except FileNotFoundError:
            current = (0, 0)
        except OSError:
            if self.fd != -1:
                return  # a directory closed to our user: no telling, go on with the file we have
            raise
        if self.fd != -1 and current == self.inode:
            return
        fd = open_access_log(self.path)
        if self.fd != -1:
            os.close(self.fd)
        self.fd = fd
        info = os.fstat(fd)
        self.inode = (info.st_dev, info.st_ino)
