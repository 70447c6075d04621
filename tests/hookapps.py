"""Hooks for tests/test_hooks.py: each appends one JSON line about its call to $HOOK_LOG."""

from __future__ import annotations

import json
import os
from typing import Any


def _record(name: str, server: Any, worker: Any = None) -> None:
    """What a hook may read (README: the hooks' facade), as JSON."""
    pending = server.pending_settings
    entry = {
        "hook": name, "pid": os.getpid(), "ppid": os.getppid(),
        "server": type(server).__name__, "server_pid": server.pid, "generation": server.generation,
        "pending_generation": server.pending_generation, "pending": pending.workers if pending else None,
        "workers_setting": server.settings.workers, "num_workers": server.num_workers,
        "listeners": list(server.listeners), "stopping": server.stopping,
        "table": [[w.pid, w.index, w.generation, w.booted, w.stopping] for w in server.workers],
        "worker": type(worker).__name__ if worker is not None else None,
        "worker_pid": worker.pid if worker is not None else None,
        "index": worker.index if worker is not None else None,
        "worker_generation": worker.generation if worker is not None else None,
        "exit_status": worker.exit_status if worker is not None else None,
    }
    server.log.debug("hook %s called", name)
    with open(os.environ["HOOK_LOG"], "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def readonly(server: Any, *args: Any) -> None:
    """Try to write into the facade; record what happened."""
    outcome = []
    for attempt in (lambda: setattr(server, "generation", 99), lambda: setattr(server, "anything", 1),
                    lambda: setattr(server.workers[0] if server.workers else server, "pid", 1)):
        try:
            attempt()
            outcome.append("written")
        except AttributeError:
            outcome.append("refused")
    with open(os.environ["HOOK_LOG"], "a") as fh:
        fh.write(json.dumps({"hook": "readonly", "outcome": outcome}) + "\n")


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
