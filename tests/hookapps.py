"""Hooks for tests/test_hooks.py: each appends one JSON line about its call to $HOOK_LOG."""

from __future__ import annotations

import json
import os
from typing import Any


def _record(name: str, server: Any, worker: Any = None) -> None:
    entry = {
        "hook": name, "pid": os.getpid(), "ppid": os.getppid(),
        "server": type(server).__name__, "server_pid": getattr(server, "pid", None),
        "worker": type(worker).__name__ if worker is not None else None,
        "worker_pid": getattr(worker, "pid", None), "index": getattr(worker, "index", None),
        "generation": getattr(worker, "generation", None), "exit_status": getattr(worker, "exit_status", None),
        "pending": getattr(getattr(server, "pending_settings", None), "workers", None),
    }
    with open(os.environ["HOOK_LOG"], "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def on_starting(server: Any) -> None:
    _record("on_starting", server)


def when_ready(server: Any) -> None:
    _record("when_ready", server)


def pre_fork(server: Any, worker: Any) -> None:
    _record("pre_fork", server, worker)


def post_fork(server: Any, worker: Any) -> None:
    _record("post_fork", server, worker)


def worker_exit(server: Any, worker: Any) -> None:
    _record("worker_exit", server, worker)


def on_reload(server: Any) -> None:
    _record("on_reload", server)


def on_exit(server: Any) -> None:
    _record("on_exit", server)


def record(server: Any, *args: Any) -> None:
    _record("record", server, *args)


def fail(server: Any, *args: Any) -> None:
    raise RuntimeError("hook failed on purpose")


def bail(server: Any, *args: Any) -> None:
    raise SystemExit(9)
