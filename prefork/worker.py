"""A worker's whole life: boot, wait in accept(), serve one connection at a time, stop.

A worker is forked by the master with the listening sockets already open. It
never returns into the master's code: :meth:`Worker.run` always leaves through
``os._exit`` with one of the statuses in ``errors.py``.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import random
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import events, hooks, keepalive, privileges, proctitle
from .accepting import AcceptLoops, StopServing
from .connection import Prepare, Refused, make_preparer
from .errors import WORKER_EXIT_APP, WORKER_EXIT_BOOT, WORKER_EXIT_ERROR, WORKER_EXIT_OK, AppImportError, PreforkError
from .events import EVENT_BOOTED, EVENT_RETIRE
from .importer import load_handler
from .log import AccessLogFile, Log
from .peer import Handler, format_peer
from .process import open_fds, set_parent_death_signal
from .record import dataclass
from .scoreboard import IDLE, STOPPING, Scoreboard, Slot
from .settings import Settings
from .sockets import Listener
from .stacks import DUMP_SIGNAL, STACK_END

if TYPE_CHECKING:
    from ssl import SSLContext

log = logging.getLogger("prefork")
T = TypeVar("T")

# How long a kept-alive connection may still send its next request once another
# connection queues (see Worker.await_next). Closing it instead races with a request
# being sent; a busy client sends within this even on a loaded machine (5 ms did not:
# wrk saw closes without an answer), and a queued connection waits at most this long.
KEEPALIVE_GRACE = 0.1


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker is built from, decided by the master before it forks."""

    settings: Settings  # its generation's
    listeners: tuple[Listener, ...]  # the sockets it accepts on
    scoreboard: Scoreboard
    slot_number: int
    index: int
    generation: int
    master_pid: int
    events_fd: int  # the write end of the master's event pipe (events.py)
    log: Log
    handler: Handler | None  # --preload: the app the master loaded
    close_fds: tuple[int, ...]  # the master's own descriptors, closed first thing
    foreign: tuple[Listener, ...]  # listeners that are not ours (closed too)
    server: hooks.Server | None = None  # what the hooks receive as ``server``
    tls_context: SSLContext | None = None  # its generation's, loaded by the master (tls.py)
    access_log: AccessLogFile | None = None  # its generation's --access-log, opened by the master
    stack_fd: int = -1  # the write end of its stack pipe (stacks.py); -1: faulthandler writes to the log


class Worker(AcceptLoops):
    """One worker process, from just after fork() to os._exit()."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        settings = self.settings = spec.settings
        self.listeners = list(spec.listeners)
        # What wraps an accepted fd, per listener: read once, not per connection.
        self.socket_kinds = {listener.fileno(): _socket_kind(listener.sock) for listener in self.listeners}
        self.scoreboard = spec.scoreboard
        self.slot: Slot = spec.scoreboard.slots[spec.slot_number]
        self.index = spec.index
        self.generation = spec.generation
        self.master_pid = spec.master_pid
        self.events_fd = spec.events_fd
        self.log = spec.log
        self.handler = spec.handler
        self.access_log = spec.access_log  # what a --wsgi handler bound to us writes its lines to
        self.close_fds = spec.close_fds
        self.foreign = spec.foreign
        self.server = spec.server  # what hooks read of the master (our forked copy), for post_fork
        # PROXY header, access rules, TLS, timeouts (connection.py); None: hand over as accepted.
        self.prepare: Prepare | None = None
        self.pid = 0  # ours, once set up (after fork)
        self.forked = False  # True in a process that app code forked from this worker (run_app_code)
        self.alive = True
        self.stop_began = 0.0  # time.monotonic() of TERM
        self.idle = False  # True only while waiting for a connection: TERM may then raise
        self.reopen_logs = False
        self.retire_at = 0
        if settings.max_requests:
            self.retire_at = settings.max_requests + random.randint(0, settings.max_requests_jitter)
        self.retire_requested = False
        self.keeps = False  # kept-alive connections wait in our epoll set (keepalive.py)

    # --- life ---

    def run(self) -> NoReturn:
        """Boot, serve until told to stop, then leave the process (never returns)."""
        status = WORKER_EXIT_ERROR
        try:
            status = self.boot_and_serve()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else WORKER_EXIT_ERROR
        except BaseException:
            log.exception("worker failed")
        finally:
            os._exit(status)

    def boot_and_serve(self) -> int:
        self.setup_process()
        try:
            self.prepare = make_preparer(self.settings, self.scoreboard, self.slot, self.spec.tls_context)
        except PreforkError as exc:
            log.error("worker boot failed: %s", exc)
            return WORKER_EXIT_BOOT
        try:
            self.post_fork_and_drop_privileges()
        except (hooks.HookError, PreforkError) as exc:
            log.error("worker boot failed: %s", exc)
            return WORKER_EXIT_BOOT
        try:
            handler = self.handler or load_handler(self.settings)
        except AppImportError as exc:
            show = exc.show_traceback or log.isEnabledFor(logging.DEBUG)
            log.error("%s", exc, exc_info=exc.__cause__ if show and exc.__cause__ else None)
            return WORKER_EXIT_APP
        except Exception:
            log.exception("worker boot failed")
            return WORKER_EXIT_BOOT
        # A handler that keeps connections open between requests (HTTP keep-alive) asks
        # its worker, between requests, whether to go on: it gets bound to this worker.
        bind = getattr(handler, "bind_worker", None)
        if bind is not None:
            handler = bind(self)
        self.known_fds = set(open_fds())
        self.slot.state = IDLE
        self.tell_master(EVENT_BOOTED)
        log.debug("booted")
        if self.serve_kept(handler):
            pass  # kept-alive connections wait in our epoll set with the listeners
        elif len(self.listeners) == 1:
            self.accept_loop_single(handler)
        else:
            self.accept_loop_multi(handler)
        if self.scoreboard.header.shutting_down:
            self.drain(handler)
        return WORKER_EXIT_OK

    def post_fork_and_drop_privileges(self) -> None:
        """The post_fork hook (still with the master's privileges, as in gunicorn), then --user/--group.

        Both come before the app is imported, so that app code never runs as root
        when the workers are meant not to.
        """
        hooks.run_or_raise("post_fork", self.settings, self.server, self.info())
        identity = privileges.resolve(self.settings.user, self.settings.group)
        if identity is None:
            return
        privileges.drop_privileges(identity)
        # Changing credentials clears the parent-death signal: arm it again, and check
        # that the master did not die in between.
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.master_pid:
            os._exit(WORKER_EXIT_OK)
        log.debug("running as %s", identity)

    def setup_process(self) -> None:
        """Signals, parent-death signal, title, faulthandler; runs first after fork."""
        signal.set_wakeup_fd(-1)
        for fd in self.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        # Listeners that are not ours (removed binds, other slots' --reuse-port sockets):
        # holding them open would keep a closed address accepting into a queue nobody serves.
        for listener in self.foreign:
            listener.sock.close()
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        # Sent to the master; a worker that gets them through its process group ignores them
        # (TTIN/TTOU would otherwise stop the process).
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.master_pid:  # the master died before prctl took effect
            os._exit(WORKER_EXIT_OK)
        self.log.enter_worker()  # log through the master: never hold the log file (see log.py)
        self.log.set_worker(self.index, self.generation)
        proctitle.set_title(f"worker [{self.settings.proc_name}] #{self.index} gen {self.generation}")
        self.enable_stacks()
        self.slot.pid = self.pid = os.getpid()  # a process a handler forks has another: see call_handler
        # Told at fork rather than asking getpid() after each request: two system calls fewer per request.
        os.register_at_fork(after_in_child=self.note_forked)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    # --- waiting for connections ---

    def serve_kept(self, handler: Handler) -> bool:
        """Listeners and kept-alive connections in one epoll set (keepalive.py); False: not for this handler."""
        try:
            return keepalive.serve_kept(self, handler)
        except StopServing:
            return True

    # --- serving ---

    def serve(self, handler: Handler, conn: socket.socket, addr: Any) -> None:
        """Run the handler on one connection, then close it whatever happened."""
        self.begin_connection(format_peer(addr))
        escaped = False
        try:
            if self.prepare is not None:
                conn, addr = self.prepare(conn, addr)
            self.call_handler(handler, conn, addr)
        except Refused:
            pass  # logged (rate-limited) where it was decided; closed before any app code ran
        except Exception as exc:
            self.handler_failed(exc, addr)
        except StopServing:
            raise
        except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the handler wants out; so do we
            log.error("handler %s raised %s on connection from %s; this worker exits and is replaced",
                      self.settings.app, repr(exc)[:200], format_peer(addr))
            escaped = True
        finally:
            try:
                conn.close()
            except OSError:
                pass
            self.end_connection()
        if escaped:
            os._exit(WORKER_EXIT_ERROR)
        self.after_serving()

    def handler_failed(self, exc: Exception, addr: Any) -> None:
        if isinstance(exc, TimeoutError) and self.settings.idle_timeout:  # the client went silent: no traceback
            log.info("connection from %s idle for %gs (--idle-timeout); closed",
                     format_peer(addr), self.settings.idle_timeout)
        else:
            log.error("handler failed on connection from %s", format_peer(addr), exc_info=exc)

    def after_serving(self) -> None:
        """Between connections (and kept-alive requests): reopen logs if asked, ask to retire if due."""
        slot = self.slot
        if self.reopen_logs:
            self.reopen_logs = False
            self.reopen()
        if self.retire_at and slot.requests >= self.retire_at and not self.retire_requested:
            self.retire_requested = True
            log.info("served %d connections (--max-requests), asking to be replaced", slot.requests)
            self.tell_master(EVENT_RETIRE)

    def call_handler(self, handler: Handler, conn: socket.socket, addr: Any) -> None:
        """Run the handler; a process it forked that comes back from it leaves at once (never serves)."""
        self.run_app_code(handler, conn, addr)

    def run_app_code(self, function: Callable[..., T], *args: Any) -> T:
        """Call app code (a handler, or a kept-alive request's answer); a forked child coming back leaves."""
        try:
            result = function(*args)
        except SystemExit as exc:
            if self.forked:
                code = exc.code
                status = 0 if code is None else code if isinstance(code, int) else WORKER_EXIT_ERROR
                self.leave_forked_child(status, f"raised SystemExit({code!r}) in it")
            raise
        except BaseException:
            if self.forked:
                log.exception("handler %s failed in a process it forked", self.settings.app)
                self.leave_forked_child(WORKER_EXIT_ERROR, "failed in it")
            raise
        if self.forked:
            self.leave_forked_child(WORKER_EXIT_OK, "returned from it")
        return result

    def note_forked(self) -> None:
        """In a child forked (os.fork) by app code running in this worker."""
        self.forked = True

    def leave_forked_child(self, status: int, how: str) -> NoReturn:
        log.warning("a process (pid %d) forked by handler %s %s: it leaves with status %d instead of "
                    "running prefork's code", os.getpid(), self.settings.app, how, status)
        os._exit(status)

    def begin_connection(self, peer: str) -> None:
        """Show the connection in our slot (threaded.py shares the slot between threads)."""
        self.slot.begin(peer)

    def end_connection(self) -> None:
        self.slot.end()
        if not self.alive:
            self.slot.state = STOPPING  # told to stop while busy: leaving, not idle

    # --- persistent connections: asked by handlers between requests (HTTP keep-alive) ---

    def should_release(self) -> bool:
        """Whether a kept-alive connection should end after the current response.

        Yes when this worker is stopping or due to retire (--max-requests), or when a
        connection waits in one of our listeners' accept queues (a zero-timeout poll).
        """
        if not self.alive or self.retire_requested or (self.retire_at and self.slot.requests + 1 >= self.retire_at):
            return True
        return not self.keeps and self.others_waiting()

    def others_waiting(self) -> bool:
        """Whether a connection waits in one of our listeners' accept queues (zero-timeout poll)."""
        poller = select.poll()
        for listener in self.listeners:
            poller.register(listener.sock, select.POLLIN)
        return bool(poller.poll(0))

    def await_next(self, conn: socket.socket, addr: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` for a kept-alive client's next request; False: close it instead.

        One thread serves one connection at a time, so an idle client must not hold
        it while others queue: a connection waiting on a listener, a stop, or the
        timeout ends the wait. A queued connection gets a short grace first: an
        idle worker may take it, and a client already sending its next request
        (its bytes in flight) is served rather than cut off. Meanwhile TERM leaves
        at once, as from accept(). True counts the request just answered and
        restarts --timeout's clock.
        """
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        for fd in [listener.fileno() for listener in self.listeners] + self.wake_fds():
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while self.alive and not self.retire_requested:
            wait = max(0.0, deadline - time.monotonic())
            ready = self.idle_poll(poller, wait)
            if conn.fileno() not in ready:
                if not ready or not self.alive:
                    return False  # --keepalive seconds idle, or stopping
                # A listener woke us: grace for the client, and for idle workers to accept.
                ready = self.idle_poll(conn_only(conn), min(wait, KEEPALIVE_GRACE))
                if not ready and self.others_waiting():
                    return False
            if ready:
                if client_closed(conn):
                    return False  # readable at its end: nothing to count, nothing to serve
                self.end_connection()
                self.begin_connection(format_peer(addr))
                return True
        return False

    def idle_poll(self, poller: select.poll, seconds: float) -> set[int]:
        """poll() as an idle worker: TERM may raise StopServing out of it."""
        self.idle = True
        try:
            return {fd for fd, _ in poller.poll(seconds * 1000)}
        finally:
            self.idle = False

    def wake_fds(self) -> list[int]:
        """Descriptors that become readable when this worker is told to stop (threaded.py)."""
        return []

    def info(self) -> hooks.WorkerInfo:
        """This worker as a hook sees it."""
        return hooks.WorkerInfo(os.getpid(), self.index, self.generation, False, None, None)

    def tell_master(self, event: int) -> None:
        events.tell_master(self.events_fd, event)

    def reopen(self) -> None:
        self.log.reopen()
        self.enable_stacks()

    def enable_stacks(self) -> None:
        """faulthandler: every thread's stack on a crash, SIGABRT (the master's timeouts) and DUMP_SIGNAL
        (``prefork dump``, after which we carry on), into our stack pipe, which the master reads."""
        target = self.spec.stack_fd if self.spec.stack_fd >= 0 else self.log.stream_fileno()
        faulthandler.enable(file=target, all_threads=True)
        # chain=True: faulthandler's C handler writes the stacks, then calls the one it replaced, ours,
        # which marks their end (stacks.STACK_END) when Python runs next. Unregistered first: a second
        # register (USR1 reopens) would keep the handler it saved the first time.
        faulthandler.unregister(DUMP_SIGNAL)
        signal.signal(DUMP_SIGNAL, self.mark_stack_end)
        faulthandler.register(DUMP_SIGNAL, file=target, all_threads=True, chain=True)

    def mark_stack_end(self, signum: int, frame: Any) -> None:
        if self.spec.stack_fd >= 0:
            try:
                os.write(self.spec.stack_fd, STACK_END)
            except OSError:  # the master is gone or not reading: the stack ends by QUIET or EOF
                pass

    # --- signal handlers: record, and raise only to leave an idle wait ---

    def handle_term(self, signum: int, frame: Any) -> None:
        """Graceful stop: finish the current connection; leave at once if idle."""
        self.alive = False
        self.stop_began = self.stop_began or time.monotonic()
        self.slot.state = STOPPING
        if self.idle:
            raise StopServing

    def handle_quit(self, signum: int, frame: Any) -> None:
        """Fast stop: leave now, whatever the worker is doing."""
        os._exit(WORKER_EXIT_OK)

    def handle_usr1(self, signum: int, frame: Any) -> None:
        """Reopen log files; now if idle (a safe point), else after the current connection."""
        if self.idle:
            self.reopen()
        else:
            self.reopen_logs = True


def client_closed(conn: socket.socket) -> bool:
    """Whether a readable connection holds only its end (EOF or reset); TLS sockets are not peeked."""
    if hasattr(conn, "pending"):  # an SSLSocket takes no recv flags
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def conn_only(conn: socket.socket) -> select.poll:
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    return poller


def _socket_kind(listener: socket.socket) -> tuple[int, int, int]:
    """What ``socket.socket(*kind, fileno=fd)`` needs to wrap an accepted fd without a system call.

    The ``family`` and ``type`` properties convert to enums, which costs more than
    the rest of our per-connection bookkeeping together: read them once per worker.
    """
    return int(listener.family), int(listener.type), listener.proto

