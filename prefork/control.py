"""The master's control socket and metrics listener, answered from its own loop.

The master holds them as one :class:`Endpoints`: the control socket
(``PIDFILE.ctl``, mode 0600: status shows peers and counters, so it is the
owner's) and the ``--metrics-bind`` listener, in the master's selector. What is
asked and answered is in ``protocol.py``; the commands that ask are in ``client.py``.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
from collections.abc import Iterator
from functools import partial

from . import metrics, protocol, status
from .endpoint import Endpoint
from .errors import BindError
from .protocol import CONTROL_NAME, control_path
from .sockets import create_listener
from .view import ServerView

log = logging.getLogger("prefork")


class Endpoints:
    """The endpoints the master answers in its loop: opened at start, the control socket bound again
    after a failed upgrade, their descriptors (which every worker closes), closed at exit."""

    def __init__(self, view: ServerView, selector: selectors.BaseSelector) -> None:
        self.view, self.selector = view, selector
        self.pidfile: str | None = None  # the control socket's path is PIDFILE.ctl: none without a pid file
        self.open: list[Endpoint] = []

    def start(self, pidfile: str | None) -> None:
        """At start (a metrics bind that fails is a BindError, as for --bind)."""
        self.pidfile = pidfile
        self.open = open_endpoints(self.view, self.selector, pidfile)

    def reclaim(self) -> None:
        """After a failed upgrade: the new master may have taken our control socket's path."""
        if self.pidfile is not None:
            self.open = reclaim_control_socket(self.view, self.open, self.selector, self.pidfile)

    def fds(self) -> Iterator[int]:
        for endpoint in self.open:
            yield from endpoint.fds()

    def close(self) -> None:
        for endpoint in self.open:
            endpoint.close()


def open_endpoints(master: ServerView, selector: selectors.BaseSelector, pidfile: str | None) -> list[Endpoint]:
    """The control socket (when there is a pid file) and the metrics listener (when asked for),
    answered from ``selector``."""
    endpoints = []
    if pidfile is not None:
        endpoint = open_control_socket(master, selector, control_path(pidfile))
        if endpoint is not None:
            endpoints.append(endpoint)
    address = master.settings.metrics_bind
    if address is not None:
        try:
            # SO_REUSEPORT: during a binary upgrade the new master binds it beside us.
            listener = create_listener(address, 64, reuse_port=address.kind == "tcp")
        except BindError as exc:
            if master.replaces is None:
                raise  # stops the start, as for --bind
            log.warning("no metrics in this upgraded master: %s", exc)
            return endpoints
        endpoints.append(Endpoint(listener.sock, f"metrics on {listener.name}", selector,
                                  partial(metrics.answer_http, master), b"\r\n\r\n", on_close=listener.unlink))
    return endpoints


def open_control_socket(master: ServerView, selector: selectors.BaseSelector, path: str) -> Endpoint | None:
    """Bind ``path`` owner-only from the start; without it the server still serves, so only warn."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask applies at bind(): no moment where another user could connect.
    old_umask = os.umask(0o177)
    try:
        try:
            os.unlink(path)  # a dead master's; a live one at the same pid file lost it with its pid file
        except FileNotFoundError:
            pass
        sock.bind(path)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        log.warning("no control socket at %s: %s", path, exc.strerror or exc)
        return None
    finally:
        os.umask(old_umask)
    inode = os.stat(path).st_ino
    return Endpoint(sock, CONTROL_NAME, selector, partial(answer_control, master), b"\n",
                    on_close=partial(unlink_if_ours, path, inode))


def reclaim_control_socket(master: ServerView, endpoints: list[Endpoint], selector: selectors.BaseSelector,
                           pidfile: str) -> list[Endpoint]:
    """After a failed binary upgrade the new master took our path (and removed it as it died).

    Returns ``endpoints`` with our control endpoint closed and replaced by one bound again
    (or by none, if it could not be bound)."""
    kept = []
    for endpoint in endpoints:
        if endpoint.name == CONTROL_NAME:
            endpoint.close()
        else:
            kept.append(endpoint)
    new = open_control_socket(master, selector, control_path(pidfile))
    return kept if new is None else [*kept, new]


def answer_control(master: ServerView, request: bytes) -> bytes:
    """One answer (protocol.py) to one request line."""
    command = protocol.parse_request(request)
    if command == protocol.STATUS:
        return protocol.encode(status.snapshot(master))
    if command == protocol.STACKS:
        return protocol.encode(master.stack_report)
    return protocol.encode({"error": f"unknown command {command!r}"})


def unlink_if_ours(path: str, inode: int) -> None:
    """Remove our socket file, unless a newer master (a binary upgrade) has bound its own there."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
