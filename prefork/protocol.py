"""The control socket's protocol, both ends: where it is, what is asked, and the answer's schema.

The master listens on ``PIDFILE.ctl`` (a unix stream socket, mode 0600). A
client connects, sends one request line (``status``) and reads one JSON
document until the master closes the connection. The answer to ``status``
(built by ``status.snapshot`` in the master, read by ``client.py``) is::

    {"master":  {"pid", "name", "app", "generation", "pending_generation", "started",
                 "listeners", "target_workers", "threads", "stopping", "phase", "shutdown_delay",
                 "graceful_timeout",
                 "pool": null | {"min_workers", "max_workers", "spare", "idle_retire"}},
     "stats":   {"connections", "restarts": {reason: count}, "reloads", "reload_failures",
                 "last_reload_error", "boot_failures", "program_failures", "program_timeouts"},
     "workers": [{"pid", "index", "generation", "state", "booted", "requests", "program_failures",
                  "program_timeouts", "started", "busy_for", "peer", "threads", "busy_threads"}, ...]}

``phase`` is ``serving``, ``shutdown delay``, ``draining`` or ``stopping fast``
(``view.Phase``). ``started`` values are Unix times; ``state`` is one of ``booting``, ``idle``,
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


def decode(data: bytes, command: str = STATUS) -> dict[str, Any]:
    """The answer to ``command``; ValueError if it is not a JSON object of its schema above.

    The client trusts nothing it reads: whatever listens at the path, every field
    it uses is checked here (finite numbers of a sane size included), so that the
    table, ``reload`` and ``scale`` never meet a surprise.
    """
    import json

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a number")

    try:
        document = json.loads(data, parse_constant=refuse)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    _check(document, ANSWERS[command], "answer")
    return dict(document)


NUMBER = (int, float)
OPTIONAL = type(None)
POOL = {"min_workers": int, "max_workers": int, "spare": int, "idle_retire": NUMBER}
MASTER = {"pid": int, "name": str, "generation": int, "pending_generation": (int, OPTIONAL), "started": NUMBER,
          "listeners": [str], "target_workers": int, "threads": int, "stopping": (str, OPTIONAL),
          "graceful_timeout": NUMBER, "pool": (POOL, OPTIONAL)}
STATS = {"connections": int, "restarts": {str: int}, "reloads": int, "reload_failures": int,
         "last_reload_error": (str, OPTIONAL), "boot_failures": int}
WORKER = {"pid": int, "index": int, "generation": int, "state": str, "requests": int, "started": NUMBER,
          "busy_for": (NUMBER, OPTIONAL), "peer": (str, OPTIONAL), "threads": int, "busy_threads": int}
ANSWER = {"master": MASTER, "stats": STATS, "workers": [WORKER]}
STACKS_ANSWER = {"seq": int, "stacks": {str: {"seq": int, "stack": str}}}
ANSWERS = {STATUS: ANSWER, STACKS: STACKS_ANSWER}
LARGEST = 2**53  # any count or time the master sends is far below; psutil and the table take it


def _check(value: Any, schema: Any, where: str) -> None:
    """ValueError naming ``where`` unless ``value`` fits ``schema``: a type (or tuple of types), a tuple
    of alternative schemas, ``{key: schema}`` (those keys at least), ``{str: schema}`` or ``[schema]``."""
    if isinstance(schema, tuple) and not isinstance(schema[0], type):  # alternatives that are schemas
        for alternative in schema:
            try:
                return _check(value, alternative, where)
            except ValueError:
                continue
        raise ValueError(f"{where} is malformed")
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise ValueError(f"{where} is not a list")
        for item in value:
            _check(item, schema[0], where)
    elif isinstance(schema, dict):
        _check_object(value, schema, where)
    elif isinstance(value, bool) or not isinstance(value, schema):  # no field is a boolean
        raise ValueError(f"{where} is not of type {schema}")
    elif isinstance(value, (int, float)) and not 0 <= value <= LARGEST:
        raise ValueError(f"{where} is out of range")
    return None


def _check_object(value: Any, schema: dict[Any, Any], where: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object")
    if str in schema:  # a mapping: every value of one schema
        for item in value.values():
            _check(item, schema[str], where)
        return
    for key, field in schema.items():
        if key not in value:
            raise ValueError(f"{where} has no {key!r}")
        _check(value[key], field, f"{where}.{key}")
