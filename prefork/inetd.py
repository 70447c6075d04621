"""Exec (inetd) mode: each connection is served by a program, the socket as its stdin and stdout.

``prefork run --exec -- PROGRAM [ARGS...]`` plugs in as the worker's handler
(:func:`exec_handler`, chosen by ``importer.load_handler``), so a connection
is accepted and prepared as always (PROXY header, access rules, per-source
limit, TLS) before the program sees it. Then, as inetd, tcpserver and
systemd's ``Accept=yes`` do, the worker:

- builds the program's environment: its own, less prefork's variables, plus
  ``--exec-env`` and the connection's facts under ucspi-tcp's tcp-environ(5)
  names and systemd's (tcpenviron.py);
- spawns the program with the connection as fd 0 and 1 in blocking mode, fd 2
  the log (or the connection, ``--exec-stderr conn``) and no other descriptor;
  with ``--log-format json`` fd 2 is a pipe the worker reads, each line a record
  (:class:`StderrLines`), so that every line of the log stays one JSON object;
  in its own session and process group, with a parent-death signal, so it
  dies with its worker; as the worker's user (privileges are already dropped);
- with TLS, relays between the TLS connection and a socketpair whose other end
  the program holds (tlsrelay.py): the program sees plain bytes, as with stunnel;
- waits for it, bounded by ``--timeout`` and by a graceful stop: its process
  group gets SIGTERM, then SIGKILL after a grace; what it leaves in its process
  group when it exits is killed, as systemd's KillMode=control-group does;
- logs the exit status and duration (debug) and counts failures and timeouts
  in the worker's scoreboard slot.

So ``--workers N`` is the number of programs that may run at once, like
xinetd's ``instances``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .errors import AppImportError
from .peer import format_peer
from .settings import Settings
from .tcpenviron import base_environment, connection_environment, tls_session

if TYPE_CHECKING:
    from .log import Log
    from .scoreboard import Slot
    from .tlsrelay import Relay

log = logging.getLogger("prefork")

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL to a program's process group
FLUSH_LIMIT = 30.0  # seconds to pass on what a program wrote before it exited (TLS relay, stderr lines)
LINE_LIMIT = 8192  # bytes of a program's stderr line in one record; a longer one is cut into several
PR_SET_PDEATHSIG = 1
# The worker ignores these (they are meant for the master); ignored signals survive exec.
WORKER_IGNORED = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2, signal.SIGWINCH)


class ProgramError(AppImportError):
    """The --exec PROGRAM does not exist or cannot be run: refused at start like an app that cannot import."""


class WorkerView(Protocol):
    """What a program's supervision needs of its worker (worker.py's Worker)."""

    alive: bool  # False once told to stop gracefully
    slot: Slot
    log: Log

    def handle_quit(self, signum: int, frame: Any) -> None: ...


# --- the program, found at start ---


def find_program(settings: Settings) -> str:
    """The path of the PROGRAM to run, searched in PATH as a shell would; ProgramError if none runs."""
    name = settings.exec[0]
    path = name if "/" in name else shutil.which(name, mode=os.F_OK)
    if path is None:
        raise ProgramError(f"exec: program {name!r} not found in PATH ({os.environ.get('PATH', os.defpath)})")
    if os.path.isdir(path):
        raise ProgramError(f"exec: program {name!r} is a directory")
    if not os.path.exists(path):
        raise ProgramError(f"exec: program {name!r} does not exist")
    if not os.access(path, os.X_OK):
        raise ProgramError(f"exec: program {name!r} is not executable by uid {os.geteuid()}")
    return path


# --- the handler ---


def exec_handler(settings: Settings) -> ExecHandler:
    """The worker's handler in exec mode (called by importer.load_handler, after privileges dropped)."""
    return ExecHandler(settings)


class ExecHandler:
    """Not yet bound to a worker: the program is found once, when the worker boots."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.argv = (find_program(settings), *settings.exec[1:])

    def __call__(self, conn: socket.socket, addr: Any) -> None:  # only bound handlers serve
        raise RuntimeError("exec handler used without bind_worker")

    def bind_worker(self, worker: WorkerView) -> Callable[[socket.socket, Any], None]:
        return ProgramRunner(self.settings, self.argv, worker)


class ProgramRunner:
    """Runs the program for each connection of one worker, and supervises it."""

    def __init__(self, settings: Settings, argv: tuple[str, ...], worker: WorkerView) -> None:
        self.settings = settings
        self.argv = argv
        self.name = os.path.basename(settings.exec[0])
        self.worker = worker
        self.environment = base_environment(os.environ, settings)
        self.libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child only calls it
        # Signals wake the supervision's poll() through this pipe (a graceful stop must be seen at once).
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.running: subprocess.Popen[bytes] | None = None

    def __call__(self, conn: socket.socket, addr: Any) -> None:
        peer = format_peer(addr)
        env = dict(self.environment, **connection_environment(conn, addr))
        relay, child_end = None, conn
        tls = tls_session(conn)
        if tls is not None:
            from .tlsrelay import Relay  # with TLS only: it needs ssl, which a plain server does not load

            ours, child_end = socket.socketpair()
            relay = Relay(tls, ours)
        lines = StderrLines(self.name) if self.wants_stderr_lines() else None
        with self.signals_watched():
            try:
                self.running = self.spawn(child_end, env, lines)
            except OSError as exc:
                self.worker.slot.program_group = 0  # the child wrote it, then failed to exec (and is reaped)
                log.error("cannot run program %s for %s: %s", self.argv[0], peer, exc.strerror or exc)
                self.worker.slot.program_failures += 1
                if relay is not None:
                    relay.close()
                    child_end.close()
                if lines is not None:
                    lines.close()
                return
            # The program holds the connection now: our copy would keep it open after the program closes it.
            child_end.close()
            if lines is not None:
                lines.started(self.running.pid)
            log.debug("program %s (pid %d) started for %s", self.name, self.running.pid, peer)
            try:
                Supervision(self, self.running, peer, relay, lines).run()
            finally:
                self.running = None

    def wants_stderr_lines(self) -> bool:
        """JSON logs: the program's raw stderr would break one-object-per-line; read it as lines instead."""
        return self.settings.exec_stderr == "log" and self.settings.log_format == "json"

    @contextlib.contextmanager
    def signals_watched(self) -> Iterator[None]:
        """From before the spawn until the program is reaped: signals wake the supervision's poll(),
        and a fast stop (QUIT, INT) kills the program's whole process group before the worker leaves."""
        old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        old_quit = {sig: signal.signal(sig, self.quit_now) for sig in (signal.SIGQUIT, signal.SIGINT)}
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_quit.items():
                signal.signal(sig, handler)

    def quit_now(self, signum: int, frame: Any) -> None:
        if self.running is not None:
            kill_group(self.running.pid, signal.SIGKILL)
        self.worker.handle_quit(signum, frame)

    def spawn(self, conn: socket.socket, env: dict[str, str], lines: StderrLines | None) -> subprocess.Popen[bytes]:
        conn.setblocking(True)  # the program expects a blocking descriptor (O_NONBLOCK is shared)
        fd = conn.fileno()
        if lines is not None:
            stderr = lines.write_fd
        else:
            stderr = fd if self.settings.exec_stderr == "conn" else self.worker.log.stream_fileno()
        return subprocess.Popen(
            self.argv, stdin=fd, stdout=fd, stderr=stderr, close_fds=True, env=env,
            start_new_session=True, preexec_fn=self.in_child(os.getpid()),
        )

    def in_child(self, worker_pid: int) -> Callable[[], None]:
        """What runs in the child between fork and exec: die with the worker; default signals; and the
        group in the scoreboard, for the master to kill if the worker cannot (see WorkerTable.kill_overdue)."""
        prctl = self.libc.prctl
        slot = self.worker.slot

        def prepare() -> None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != worker_pid:  # the worker died before prctl took effect
                os._exit(127)
            # Here, before exec (and after setsid): written by the worker once Popen returned, the group
            # went unrecorded while the program already ran, and a worker stopped then left it behind.
            slot.program_group = os.getpid()
            for sig in WORKER_IGNORED:
                signal.signal(sig, signal.SIG_DFL)

        return prepare


class Supervision:
    """One program's run: wait for it (and relay TLS), enforce --timeout and a stop's grace, report."""

    def __init__(self, runner: ProgramRunner, proc: subprocess.Popen[bytes], peer: str, relay: Relay | None,
                 lines: StderrLines | None) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.worker = runner.worker
        self.proc = proc
        self.peer = peer
        self.relay = relay
        self.lines = lines
        self.started = time.monotonic()
        self.exited_at: float | None = None
        self.status: int | None = None
        # When to send the process group SIGTERM, then SIGKILL; why, for the log.
        self.term_at: float | None = None
        self.kill_at: float | None = None
        self.stop_grace = KILL_GRACE
        self.timed_out = False
        self.stop_seen = False
        if self.settings.timeout:
            self.term_at = self.started + self.settings.timeout

    def run(self) -> None:
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            self.supervise(pidfd)
        finally:
            os.close(pidfd)
            if self.status is None:  # something failed in here: leave nothing running
                self.kill_group(signal.SIGKILL)
                self.status = self.proc.wait()
            if self.relay is not None:
                self.relay.close()
            if self.lines is not None:
                self.lines.close()
        self.report()

    def passed_on(self) -> bool:
        """Whether what the program wrote before it exited has been relayed and logged."""
        return (self.relay is None or self.relay.done) and (self.lines is None or self.lines.ended)

    def supervise(self, pidfd: int) -> None:
        while True:
            now = time.monotonic()
            self.act_on_deadlines(now)
            if self.exited_at is not None and (self.passed_on() or now >= self.exited_at + FLUSH_LIMIT):
                return
            poller = select.poll()
            poller.register(self.runner.wake_r, select.POLLIN)
            if self.exited_at is None:
                poller.register(pidfd, select.POLLIN)
            if self.relay is not None:
                self.relay.register(poller)
            if self.lines is not None and not self.lines.ended:
                poller.register(self.lines.read_fd, select.POLLIN)
            timeout = self.next_deadline(now)
            ready = {fd for fd, _ in poller.poll(None if timeout is None else max(0.0, timeout - now) * 1000)}
            if self.runner.wake_r in ready:
                drain(self.runner.wake_r)
            if pidfd in ready and self.exited_at is None:
                self.reap()
            if self.relay is not None:
                self.relay.pump()
            if self.lines is not None and self.lines.read_fd in ready:
                self.lines.pump()

    def act_on_deadlines(self, now: float) -> None:
        if not self.worker.alive and not self.stop_seen and self.exited_at is None:
            # A graceful stop or reload: the program may finish within --graceful-timeout; then it is
            # ended just before the master's deadline, so that its whole process group goes with it.
            self.stop_seen = True
            grace = min(KILL_GRACE, self.settings.graceful_timeout / 4)
            stop_term = now + max(0.0, self.settings.graceful_timeout - 2 * grace)
            if self.term_at is None or stop_term < self.term_at:
                self.term_at, self.stop_grace = stop_term, grace
        if self.exited_at is not None:
            return
        if self.term_at is not None and now >= self.term_at:
            self.term_at = None
            if self.stop_seen:
                log.warning("program %s (pid %d) for %s still running at the end of the graceful stop; "
                            "ending it", self.runner.name, self.proc.pid, self.peer)
                grace = self.stop_grace
            else:
                self.timed_out = True
                log.warning("program %s (pid %d) for %s ran for %gs (--timeout); killing its process group",
                            self.runner.name, self.proc.pid, self.peer, self.settings.timeout)
                grace = KILL_GRACE
            self.kill_group(signal.SIGTERM)
            self.kill_at = now + grace
        elif self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self.kill_group(signal.SIGKILL)

    def next_deadline(self, now: float) -> float | None:
        deadlines = [t for t in (self.term_at, self.kill_at) if t is not None and self.exited_at is None]
        if self.exited_at is not None:
            deadlines.append(self.exited_at + FLUSH_LIMIT)
        return min(deadlines) if deadlines else None

    def reap(self) -> None:
        """The program exited: end what it left in its group (its pid is not reused until reaped), reap it."""
        self.kill_group(signal.SIGKILL)
        self.runner.worker.slot.program_group = 0  # before the wait: once reaped, its pid may be reused
        self.status = self.proc.wait()
        self.exited_at = time.monotonic()

    def kill_group(self, sig: int) -> None:
        kill_group(self.proc.pid, sig)

    def report(self) -> None:
        status = self.status if self.status is not None else -1
        took = (self.exited_at or time.monotonic()) - self.started
        slot = self.worker.slot
        if self.timed_out:
            slot.program_timeouts += 1
        elif status != 0:
            slot.program_failures += 1
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        log.debug("program %s (pid %d) for %s: %s after %.3fs", self.runner.name, self.proc.pid, self.peer,
                  how, took)


class StderrLines:
    """A program's stderr as a pipe the worker reads: each line logged as one record naming the program.

    The pipe's end (rather than the program's exit) ends it: what a program's
    children still hold is read until they close it, or for FLUSH_LIMIT.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = 0
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self.partial = b""
        self.ended = False

    def started(self, pid: int) -> None:
        """The program holds the write end now: ours would keep the pipe from ever ending."""
        self.pid = pid
        os.close(self.write_fd)
        self.write_fd = -1

    def pump(self) -> None:
        for _ in range(16):  # bounded: a program that never stops writing must not keep us from its deadlines
            if self.ended:
                return
            try:
                data = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self.ended = True
            *whole, self.partial = (self.partial + data).split(b"\n")
            for line in whole:
                self.emit(line)
            while len(self.partial) >= LINE_LIMIT:
                self.emit(self.partial[:LINE_LIMIT])
                self.partial = self.partial[LINE_LIMIT:]

    def emit(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        log.info("program %s (pid %d): %s", self.name, self.pid, text)

    def close(self) -> None:
        if self.partial:  # a last line without its newline
            self.emit(self.partial)
            self.partial = b""
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1
        self.ended = True


def kill_group(pgid: int, sig: int) -> None:
    """Signal a program's process group (its pid: it leads its own session; not reused until reaped)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # gone already (or a setuid program out of our reach: its parent-death signal still holds)


def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
