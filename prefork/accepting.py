"""Waiting for connections: the accept loops, and the drain after TERM.

A worker with one listener blocks in ``accept()`` itself; with several it waits
in epoll (EPOLLEXCLUSIVE). TERM raises :class:`StopServing` out of an idle wait;
a connection accept() returned just as TERM came is served, not dropped
(``serve_orphan``), and on shutdown what the listeners queued is served before
the worker leaves (``drain``). Serving itself is the worker's (worker.py): these
loops hand it each accepted socket. A mixin of the worker, not functions taking
it: threaded.py's worker replaces the loops and calls ``accept_one`` and ``drain``.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .drain import HANDSHAKE_SETTLE, handshakes_under_way
from .peer import Handler
from .process import open_fds
from .scoreboard import Scoreboard
from .sockets import Listener
from .turns import TakeTurns

log = logging.getLogger("prefork")

# accept() errors that concern one connection or a passing shortage, not the listener.
TRANSIENT_ACCEPT_ERRORS = {
    errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EMFILE,
    errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ENETDOWN,
}


class StopServing(BaseException):
    """Raised by the TERM handler to leave a blocking accept() (PEP 475 would retry it).

    A BaseException so that no ``except Exception`` can swallow it.
    """


class AcceptLoops:
    """The part of :class:`~prefork.worker.Worker` that waits for connections (a mixin: the state is the worker's)."""

    listeners: list[Listener]
    socket_kinds: dict[int, tuple[int, int, int]]  # what wraps an accepted fd, per listener
    scoreboard: Scoreboard
    alive: bool
    idle: bool  # True only while waiting for a connection: TERM may then raise
    stop_began: float  # time.monotonic() of TERM
    known_fds: set[int]  # open at boot: not an orphaned connection

    if TYPE_CHECKING:
        def serve(self, handler: Handler, conn: socket.socket, addr: Any) -> None: ...  # worker.py

    def accept_loop_single(self, handler: Handler) -> None:
        """Block in accept() itself: the kernel wakes exactly one idle worker per connection."""
        listener = self.listeners[0].sock
        accept: Callable[[], tuple[int, Any]] = listener._accept  # type: ignore[attr-defined]
        kind = self.socket_kinds[listener.fileno()]
        try:
            while True:
                self.idle = True
                if not self.alive:
                    break
                try:
                    fd, addr = accept()
                except BlockingIOError:
                    if self.scoreboard.header.shutting_down:
                        # The master made the listener non-blocking to stop: leave (and drain).
                        # A TERM that landed inside accept() has not run its handler yet, and
                        # nothing would interrupt the select() below to run it.
                        break
                    # Threaded workers (an old or new generation's --threads) need the shared
                    # listener non-blocking: wait for a connection instead, still idle.
                    select.select([listener], [], [])
                    continue
                except OSError as exc:
                    self.idle = False
                    self.accept_failed(exc)
                    continue
                self.idle = False
                self.serve(handler, socket.socket(*kind, fileno=fd), addr)
        except StopServing:
            self.idle = False
            self.serve_orphan(handler)

    def accept_loop_multi(self, handler: Handler) -> None:
        """Wait on several listeners; EPOLLEXCLUSIVE wakes one idle worker per connection."""
        by_fd = {listener.fileno(): listener.sock for listener in self.listeners}
        poller = select.epoll()
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        turns = TakeTurns(poller)
        try:
            while True:
                self.idle = True
                if not self.alive:
                    break
                ready = poller.poll()
                self.idle = False
                for fd, _ in ready:
                    if self.accept_one(handler, by_fd[fd]):
                        turns.served(fd)
        except StopServing:
            self.idle = False
        finally:
            poller.close()

    def accept_one(self, handler: Handler, listener: socket.socket) -> bool:
        """One non-blocking accept and serve; False when nothing was waiting."""
        try:
            fd, addr = listener._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            return False
        except OSError as exc:
            self.accept_failed(exc)
            return True
        self.serve(handler, socket.socket(*self.socket_kinds[listener.fileno()], fileno=fd), addr)
        return True

    def accept_failed(self, exc: OSError) -> None:
        if exc.errno not in TRANSIENT_ACCEPT_ERRORS:
            raise exc
        log.warning("accept() failed: %s", os.strerror(exc.errno or 0))
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            time.sleep(0.1)  # out of resources: let other workers take the queued connection

    def drain(self, handler: Handler) -> None:
        """On shutdown, serve what the kernel completed on the sockets the master closes (drain.py).

        They complete no new handshake now, so the queue only shrinks; while it is empty, wait for
        the final ACKs of handshakes under way at the stop, for at most HANDSHAKE_SETTLE seconds from
        it. A socket someone else holds (systemd's) is not ours to drain: its next instance serves it.
        """
        ours = [listener.sock for listener in self.listeners if listener.owned]
        ports = {sock.getsockname()[1] for sock in ours if sock.family in (socket.AF_INET, socket.AF_INET6)}
        give_up = (self.stop_began or time.monotonic()) + HANDSHAKE_SETTLE
        while ours:
            for listener in ours:
                while self.accept_one(handler, listener):
                    pass
            left = give_up - time.monotonic()
            if left <= 0 or not ports or not handshakes_under_way(ports):
                return
            select.select(ours, [], [], min(left, 0.05))

    def serve_orphan(self, handler: Handler) -> None:
        """Serve a connection accept() returned just as TERM raised, if there is one.

        The signal handler can run after the accept system call has returned but
        before its descriptor reached a variable; the descriptor then sits open
        and unnamed. Find it among our open descriptors (a connected socket whose
        local address is one of our listeners') and serve it rather than drop it.
        """
        wanted = {_local_key(listener.sock) for listener in self.listeners}
        for fd in open_fds():
            if fd in self.known_fds:
                continue
            try:
                probe = socket.socket(fileno=fd)
            except OSError:
                continue
            try:
                if probe.type != socket.SOCK_STREAM or _local_key(probe) not in wanted:
                    continue
                if probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                addr = probe.getpeername()
            except OSError:
                continue
            finally:
                family, type_, proto = probe.family, probe.type, probe.proto
                probe.detach()
            log.debug("serving connection accepted as the stop signal came, fd %d", fd)
            self.serve(handler, socket.socket(family, type_, proto, fileno=fd), addr)


def _local_key(sock: socket.socket) -> tuple[int, Any]:
    """What an accepted socket shares with its listener: the family and port (or path)."""
    name = sock.getsockname()
    if isinstance(name, tuple):
        return (sock.family, name[1])
    return (sock.family, name)
