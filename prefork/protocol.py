"""The control socket's protocol, both ends: where it is, what is asked, and the answer's schema.

The master listens on ``PIDFILE.ctl`` (a unix stream socket, mode 0600). A
client connects, sends one request line (``status``) and reads one JSON
document until the master closes the connection. The answer to ``status``
(built by ``status.snapshot`` in the master, read by ``client.py``) is::

    {"master":  {"pid", "name", "app", "generation", "pending_generation", "started",
                 "listeners", "target_workers", "threads", "stopping", "graceful_timeout",
                 "pool": null | {"min_workers", "max_workers", "spare", "idle_retire"}},
     "stats":   {"connections", "restarts": {reason: count}, "reloads", "reload_failures",
                 "last_reload_error", "boot_failures"},
     "workers": [{"pid", "index", "generation", "state", "booted", "requests", "started",
                  "busy_for", "peer", "threads", "busy_threads"}, ...]}

``started`` values are Unix times; ``state`` is one of ``booting``, ``idle``,
``busy``, ``stopping``. The answer to ``stacks`` (``stacks.py``, read by ``prefork dump``) is
``{"seq": N, "stacks": {"PID": {"seq": n, "stack": "..."}}}``: the latest stack each live
worker wrote, numbered in the order the master read them. An unknown request is answered
``{"error": "..."}``.
"""

from __future__ import annotations

import os
from typing import Any

STATUS = "status"
STACKS = "stacks"
MASTER_TITLE = "prefork: master"  # how a client recognises the master named by a pid file
CONTROL_NAME = "control socket"


def control_path(pidfile: str) -> str:
    """Where the control socket of the master owning ``pidfile`` listens."""
    return os.path.abspath(pidfile) + ".ctl"


def request(command: str = STATUS) -> bytes:
    return command.encode() + b"\n"


def parse_request(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip() or STATUS


def encode(document: dict[str, Any]) -> bytes:
    import json  # when first asked: a master nobody queries does not load it

    return json.dumps(document).encode() + b"\n"


def decode(data: bytes) -> dict[str, Any]:
    """The answer; ValueError if it is not a JSON object."""
    import json

    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document
