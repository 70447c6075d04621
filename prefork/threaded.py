"""``--threads N``: N threads per worker, each accepting and serving connections itself.

The multiple-accept model carried inside the process: no dispatcher thread and
no queue. Each thread waits in its own epoll on every listener (EPOLLEXCLUSIVE:
the kernel wakes one waiter per connection, whichever process or thread it
belongs to), accepts without blocking, and runs the handler.

Signals reach only the main thread, so the single-threaded worker's trick of
raising out of ``accept()`` from the TERM handler cannot stop the others. Here
the main thread starts the threads and waits in ``join()`` (which lets signal
handlers run); TERM writes one byte to a wake pipe that every thread's epoll
also watches. The byte is never read, so the pipe stays readable and every
thread sees it: idle threads leave at once, busy ones after their connection.
Graceful stop is therefore "join all threads", and QUIT still leaves at once.

For this the listeners must be non-blocking (a thread woken with the others
must not then sleep in ``accept()``); the master sets them so before forking a
threaded worker, or any worker while a threaded one still runs (a reload
changing --threads), and single-threaded workers wait in ``select()`` when
they find them so.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any, NoReturn

from . import keepalive
from .peer import Handler
from .scoreboard import IDLE, STOPPING
from .sockets import Listener
from .turns import TakeTurns
from .worker import Worker, WorkerSpec


def make_nonblocking(listeners: list[Listener]) -> None:
    """In the master, before forking a threaded worker: O_NONBLOCK is shared by every process."""
    for listener in listeners:
        listener.sock.setblocking(False)


def run_worker(spec: WorkerSpec) -> NoReturn:
    """In the forked child: the worker ``spec`` describes, threaded or not, from boot to os._exit()."""
    (ThreadedWorker if spec.settings.threads > 1 else Worker)(spec).run()


class ThreadedWorker(Worker):
    """A worker whose ``--threads`` threads each accept and serve."""

    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(spec)
        self.lock = threading.Lock()  # guards the slot's counters, written by every thread
        self.busy: dict[int, tuple[float, str]] = {}  # thread ident -> (busy since, peer)
        self.wake_r = self.wake_w = -1
        self.failure: BaseException | None = None

    # --- waiting: whatever the number of listeners, the same threaded loop ---

    def serve_kept(self, handler: Handler) -> bool:
        return False  # each thread keeps its own (accept_thread)

    def accept_loop_single(self, handler: Handler) -> None:
        self.serve_in_threads(handler)

    def accept_loop_multi(self, handler: Handler) -> None:
        self.serve_in_threads(handler)

    def serve_in_threads(self, handler: Handler) -> None:
        """Start the threads, then wait for them; signal handlers run here, between waits."""
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.slot.threads = self.settings.threads
        threads = [threading.Thread(target=self.accept_thread, args=(handler,), name=f"accept-{number}",
                                    daemon=True) for number in range(self.settings.threads)]
        for thread in threads:
            thread.start()
        if not self.alive:  # TERM came before the pipe existed: pass it on now
            self.wake_threads()
        for thread in threads:
            thread.join()
        if self.failure is not None:
            raise self.failure

    def accept_thread(self, handler: Handler) -> None:
        try:
            if not keepalive.serve_kept(self, handler, self.wake_r):  # this thread's own kept connections
                self.accept_in_epoll(handler)
            if self.scoreboard.header.shutting_down:
                self.drain(handler)  # every thread drains: the queue empties in parallel
        except BaseException as exc:  # a listener failed: stop the whole worker, report in the main thread
            self.failure = exc
            self.alive = False
            self.wake_threads()

    def accept_in_epoll(self, handler: Handler) -> None:
        by_fd = {listener.fileno(): listener.sock for listener in self.listeners}
        poller = select.epoll()
        try:
            for fd in by_fd:
                poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            poller.register(self.wake_r, select.EPOLLIN)
            turns = TakeTurns(poller)  # with the other threads and workers
            while self.alive:
                for fd, _ in poller.poll():
                    if fd != self.wake_r and self.alive and self.accept_one(handler, by_fd[fd]):
                        turns.served(fd)
        finally:
            poller.close()

    def wake_fds(self) -> list[int]:
        """A thread waiting on a kept-alive client also wakes on TERM."""
        return [self.wake_r]

    def wake_threads(self) -> None:
        if self.wake_w != -1:
            try:
                os.write(self.wake_w, b"x")
            except BlockingIOError:
                pass  # already full: already readable

    # --- the slot, shared by the threads ---

    def begin_connection(self, peer: str) -> None:
        with self.lock:
            first = not self.busy
            self.busy[threading.get_ident()] = (time.monotonic(), peer)
            self.slot.busy_threads = len(self.busy)
            if first:
                self.slot.begin(peer)

    def end_connection(self) -> None:
        """Count the connection; the slot then shows the oldest connection still served, if any."""
        slot = self.slot
        with self.lock:
            self.busy.pop(threading.get_ident(), None)
            slot.requests += 1
            slot.busy_threads = len(self.busy)
            if self.busy:
                since, peer = min(self.busy.values())
                slot.begin(peer)
                slot.busy_since = since  # the master's --timeout judges the longest-running one
            else:
                slot.state = IDLE if self.alive else STOPPING

    # --- signals (main thread) ---

    def handle_term(self, signum: int, frame: Any) -> None:
        """Graceful stop: idle threads leave now, busy ones after their connection."""
        self.alive = False
        self.stop_began = self.stop_began or time.monotonic()
        if not self.busy:
            self.slot.state = STOPPING
        self.wake_threads()

    def handle_usr1(self, signum: int, frame: Any) -> None:
        """Reopen log files now: the handler's lock keeps other threads' records whole."""
        self.reopen()

