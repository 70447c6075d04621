"""Kept-alive connections that wait in the worker's own epoll set, beside the listeners.

A worker (each thread of a --threads worker) holds one epoll set with its
listeners (EPOLLEXCLUSIVE: a new connection wakes one idle waiter) and its
kept-alive connections. It serves whichever of them is ready, one at a time:

- a kept connection whose next request came is answered, then waits again;
  while quick requests come, slow ones (by their last request) get at most
  half of the worker's time (quick requests do not wait behind every slow one);
- a connection waiting on a listener is accepted after at most one more
  request from the kept ones (each turn accepts first, then answers one kept
  request), so new clients never wait behind kept ones;
- idle kept connections cost nothing: a worker with no request to answer is
  idle in epoll_wait, and its scoreboard slot says so (busy only while it
  answers a request, which is what --timeout judges);
- at most --keepalive-max are kept; over it the longest idle is closed, as is
  one idle --keepalive seconds;
- on a stop (TERM, a reload, --max-requests' retiring) a kept connection
  whose request already came is answered (``Connection: close``) and the idle
  ones are closed at once.

Only a handler that can leave a connection between requests (:class:`Keeping`:
the WSGI handler) runs here, and not with --max-per-source, which counts the
connections a worker holds through its one scoreboard slot: there the worker
keeps serving one connection at a time (worker.py).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .connection import Prepare, Refused
from .peer import Handler, format_peer
from .settings import Settings
from .sockets import Listener
from .turns import TakeTurns

T = TypeVar("T")

LISTENER_EVENTS = select.EPOLLIN | select.EPOLLEXCLUSIVE
SLOW = 0.005  # seconds: a request that took this long lets quicker ones go first next time (KeptLoop.next_ready)


class Session(Protocol):
    """One connection as a keeping handler serves it, a request at a time."""

    def first(self) -> bool | None:
        """Read what a new connection sent, without waiting: True: a request came; None: nothing yet; False: closed."""

    def receive(self) -> bool:
        """Read what a ready kept connection sent; False: it closed (nothing to answer)."""

    def resume(self) -> bool:
        """Answer the requests received (reading more if one is not whole); True: keep it."""


class Worker(Protocol):
    """What the loop uses of its worker (prefork.worker.Worker, threaded.ThreadedWorker)."""

    settings: Settings
    listeners: list[Listener]
    socket_kinds: dict[int, tuple[int, int, int]]
    prepare: Prepare | None
    alive: bool
    idle: bool  # True while waiting: TERM may raise out of the wait (a single-threaded worker)
    keeps: bool  # answers keep their connection even while others wait (response.py asks should_release)

    def accept_failed(self, exc: OSError) -> None: ...

    def begin_connection(self, peer: str) -> None: ...

    def end_connection(self) -> None: ...

    def handler_failed(self, exc: Exception, addr: Any) -> None: ...

    def after_serving(self) -> None: ...

    def run_app_code(self, function: Callable[..., T], *args: Any) -> T: ...  # a forked child never returns


class Keeping(Protocol):
    def open(self, conn: socket.socket, addr: Any) -> Session: ...


def keeps_connections(settings: Settings) -> bool:
    """Whether this generation's workers keep connections in their epoll set (and need non-blocking listeners)."""
    return settings.wsgi and settings.keepalive > 0 and not settings.max_per_source


class Kept:
    __slots__ = ("addr", "fd", "peer", "session", "since", "sock", "took")

    def __init__(self, sock: socket.socket, addr: Any, peer: str, session: Session) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.peer = peer
        self.session = session
        self.since = time.monotonic()  # when its last request was answered
        self.took = 0.0  # how long that took


class KeptLoop:
    """One thread's listeners and kept-alive connections in one epoll set (see the module docstring)."""

    def __init__(self, worker: Worker, handler: Keeping, wake_fd: int = -1) -> None:
        self.worker = worker
        self.handler = handler
        self.limit = worker.settings.keepalive_max
        self.idle_seconds = worker.settings.keepalive
        self.listeners = {listener.fileno(): listener.sock for listener in worker.listeners}
        self.poller = select.epoll()
        for fd in self.listeners:
            self.poller.register(fd, LISTENER_EVENTS)
        if wake_fd != -1:
            self.poller.register(wake_fd, select.EPOLLIN)
        self.turns = TakeTurns(self.poller)
        self.kept: dict[int, Kept] = {}  # by fd, the longest idle first
        self.ready: dict[int, None] = {}  # kept connections whose next request came, oldest first
        self.slow_ended = self.slow_took = 0.0  # the last slow request's end and duration (next_ready)
        self.quick_at = 0.0  # when the last quick request was answered
        worker.keeps = True

    def run(self) -> None:
        """Serve until the worker stops; then answer requests already here and close every kept connection."""
        try:
            while self.worker.alive:
                self.turn()
        finally:
            try:
                self.take_what_woke_us()
                self.close_all()
            finally:
                self.poller.close()

    def take_what_woke_us(self) -> None:
        """Leaving: accept a connection that epoll woke only us for, or it could wait for ever.

        EPOLLEXCLUSIVE wakes one waiting worker per new connection. When TERM (a reload,
        TTOU, --max-requests' replacement) raised StopServing out of the wait that such a
        connection ended, no other worker was woken for it: with nobody else arriving it
        stayed queued (seen: a client waiting 10 s on an idle new worker). Its first request
        is answered with ``Connection: close``; the rest of the queue is the others' (or the
        stop's drain).
        """
        try:
            events = self.poller.poll(0)
        except OSError:
            return
        for fd, _ in events:
            if fd in self.listeners:
                self.accept(fd)

    def turn(self) -> None:
        """Wait; accept one connection per ready listener; answer one kept request; close the expired."""
        worker = self.worker
        timeout = self.wait_time()
        worker.idle = True  # TERM raises StopServing out of the wait (a single-threaded worker)
        try:
            events = self.poller.poll(timeout)
        finally:
            worker.idle = False
        listeners, kept, ready = self.listeners, self.kept, self.ready
        accept = []
        for fd, _ in events:
            if fd in kept:
                ready[fd] = None  # one already there keeps its place
            elif fd in listeners:
                accept.append(fd)
        for fd in accept:  # even when told to stop meanwhile: see take_what_woke_us
            self.accept(fd)
        now = time.monotonic()
        if ready and worker.alive:
            due = self.next_ready(now)
            if due is not None:
                del ready[due]
                now = self.resume(kept.pop(due), now)
        if kept:
            self.expire(now)

    def next_ready(self, now: float) -> int | None:
        """The ready connection to answer: the oldest, but slow ones get at most half the time.

        A connection whose last request took SLOW seconds or more is slow. While quick
        requests come, a slow one is answered only once the worker has given the quick
        ones, since the last slow request ended, as long as that request took (None:
        hold the slow ones back until then). Quick requests do not queue behind every
        slow one; with no quick ones coming, slow ones go on at full speed.
        """
        ready, kept = self.ready, self.kept
        share_given = now - self.slow_ended >= self.slow_took
        for fd in ready:
            if share_given or kept[fd].took < SLOW:
                return fd
        if now - self.quick_at < self.slow_took:
            return None
        return next(iter(ready))

    def answered(self, kept: Kept, started: float) -> float:
        """``kept``'s request (begun at ``started``) is answered: note how long it took; the time now."""
        kept.since = now = time.monotonic()
        kept.took = took = now - started
        if took >= SLOW:
            self.slow_ended, self.slow_took = now, took
        else:
            self.quick_at = now
        return now

    def wait_time(self) -> float:
        """How long the next epoll wait may last: 0 with a request to answer now; else until one is due."""
        if not self.ready:
            return self.until_expiry()
        now = time.monotonic()
        if self.next_ready(now) is not None:
            return 0.0
        idle = self.until_expiry()
        hold = self.slow_ended + self.slow_took - now
        return hold if idle < 0 else min(hold, idle)

    def accept(self, fd: int) -> None:
        worker = self.worker
        try:
            conn_fd, addr = self.listeners[fd]._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            return  # another worker took it
        except OSError as exc:
            worker.accept_failed(exc)
            return
        self.turns.served(fd)
        conn = socket.socket(*worker.socket_kinds[fd], fileno=conn_fd)
        try:
            if worker.prepare is not None:
                conn, addr = worker.prepare(conn, addr)  # bounded by --handshake-timeout
            session = worker.run_app_code(self.handler.open, conn, addr)
            arrived = worker.run_app_code(session.first)
        except Refused:
            return  # logged and closed where it was decided
        except Exception as exc:
            worker.handler_failed(exc, addr)
            close(conn)
            return
        if arrived is False:
            close(conn)
            return
        kept = Kept(conn, addr, format_peer(addr), session)  # the PROXY header's client, if any
        self.keep(kept)
        if arrived:
            self.serve(self.kept.pop(kept.fd), time.monotonic())

    def resume(self, kept: Kept, now: float) -> float:
        """Answer the request a kept connection sent (not counted if it only closed); the time after."""
        try:
            alive = kept.session.receive()  # the parser's, not the application's, code
        except OSError:
            alive = False
        if alive:
            return self.serve(kept, now)
        self.drop(kept)
        return now

    def serve(self, kept: Kept, started: float) -> float:
        """Answer the requests received on ``kept`` (busy in the scoreboard meanwhile); keep it or close it.
        The time after."""
        worker = self.worker
        worker.begin_connection(kept.peer)
        keep = False
        try:
            keep = worker.run_app_code(kept.session.resume)
        except Exception as exc:
            worker.handler_failed(exc, kept.addr)
        finally:
            worker.end_connection()
        if keep:
            now = self.answered(kept, started)
            self.kept[kept.fd] = kept  # now the most recently active
        else:
            self.drop(kept)
            now = time.monotonic()
        worker.after_serving()
        return now

    def keep(self, kept: Kept) -> None:
        fd = kept.fd
        self.poller.register(fd, select.EPOLLIN)
        self.kept[fd] = kept
        if len(self.kept) > self.limit:
            for oldest in self.kept.values():
                if oldest.fd not in self.ready:  # the longest idle with no request waiting
                    self.kept.pop(oldest.fd)
                    self.drop(oldest)
                    break

    def drop(self, kept: Kept) -> None:
        fd = kept.fd
        self.ready.pop(fd, None)
        try:
            self.poller.unregister(fd)
        except OSError:
            pass
        close(kept.sock)

    def until_expiry(self) -> float:
        """Seconds until the longest idle connection's --keepalive ends (-1: nothing kept, wait for ever)."""
        for kept in self.kept.values():
            return max(0.0, kept.since + self.idle_seconds - time.monotonic())
        return -1.0

    def expire(self, now: float) -> None:
        """Close the kept connections idle --keepalive seconds at ``now`` (the oldest are first)."""
        deadline = now - self.idle_seconds
        while self.kept:
            fd, kept = next(iter(self.kept.items()))
            if kept.since > deadline or fd in self.ready:
                return
            del self.kept[fd]
            self.drop(kept)

    def close_all(self) -> None:
        """Stopping: answer the kept connections whose request is already here, close the rest."""
        try:
            events = self.poller.poll(0)
        except OSError:
            events = []
        for fd, _ in events:
            if fd in self.kept:
                self.ready[fd] = None
        for fd in list(self.ready):
            kept = self.kept.pop(fd, None)
            if kept is not None:
                self.resume(kept, time.monotonic())  # the answer says Connection: close (the worker is stopping)
        for kept in list(self.kept.values()):
            self.drop(kept)
        self.kept.clear()


def serve_kept(worker: Worker, handler: Handler, wake_fd: int = -1) -> bool:
    """Run ``worker``'s kept-alive loop when its handler and settings allow it; False: they do not."""
    if not keeps_connections(worker.settings) or not hasattr(handler, "open"):
        return False
    KeptLoop(worker, handler, wake_fd).run()
    return True


def close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass
