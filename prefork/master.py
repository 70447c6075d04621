"""The master: forks workers, replaces the dead and the stuck, and obeys signals.

The master never touches a connection and never blocks on anything but its
selector. Signal handlers do nothing themselves: ``signal.set_wakeup_fd``
writes each signal's number into a pipe, and the loop reads it and dispatches
through :attr:`Master.signal_table`, the whole signal policy on one screen.
What it does to workers lives in ``worker_table.py``, reloads in ``reload.py``,
the binary upgrade in ``upgrade.py`` and the boot back-off in ``boot.py``.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import control, devreload, hooks, proctitle
from .boot import BootPolicy
from .endpoint import Endpoint
from .errors import EXIT_OK, PreforkError, describe_status
from .events import EventPipe
from .listeners import Listeners
from .log import Log
from .peer import Handler
from .pidfile import Pidfile, claim
from .pool import Pool
from .reload import Generations
from .scoreboard import Scoreboard
from .settings import Settings
from .stacks import Stacks
from .stats import Stats
from .systemd import Notifier
from .upgrade import Upgrade, upgraded_from
from .view import Stop, WorkerProcess, generation_booted, newest_settings, settings_for
from .wakeup import Wakeup
from .worker_table import ForkWith, WorkerTable

if TYPE_CHECKING:
    import subprocess
    from ssl import SSLContext

log = logging.getLogger("prefork")

HANDLED_SIGNALS = (
    signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGWINCH,
)


class Master:
    """The supervisor process. :meth:`run` returns the exit status or raises a PreforkError."""

    def __init__(self, settings: Settings, log_: Log, reload_settings: Callable[[], Settings],
                 preloaded: Handler | None = None, tls_context: SSLContext | None = None) -> None:
        self.log = log_
        self.reload_settings = reload_settings
        self.preloaded = preloaded
        self.pid = os.getpid()
        self.num_workers = settings.workers
        self.stats = Stats()  # counters for status and metrics
        self.scoreboard = Scoreboard(max(1024, settings.workers * 4))
        self.table = WorkerTable(self.scoreboard, self.stats)  # pid -> WorkerProcess, and what to do to them
        self.boot = BootPolicy()
        self.listeners = Listeners()
        self.notifier = Notifier.from_environment(os.environ)  # systemd; takes NOTIFY_SOCKET out of it
        # Which generation serves, and the one on trial during a reload.
        self.gens = Generations(settings, self.listeners, self.table, self.stats, self.notifier, tls_context)
        self.pidfile: Pidfile | None = None
        self.watcher: subprocess.Popen[bytes] | None = None  # --reload's file watcher
        self.stopping: Stop | None = None  # GRACEFUL or FAST once the server stops
        self.shutdown_delay_ends: float | None = None  # after TERM with --shutdown-delay: serving until then
        self.halt_error: Exception | None = None
        self.pool = Pool()  # --max-workers: decides num_workers from the scoreboard
        self.endpoints: list[Endpoint] = []  # control socket, metrics: answered in our loop
        self.selector = selectors.DefaultSelector()
        self.upgrade = Upgrade(self.selector)  # the successor a USR2 started, or the master we replace
        self.wakeup = Wakeup(HANDLED_SIGNALS)
        self.events = EventPipe()
        self.stacks = Stacks(self.selector)  # the workers' faulthandler pipes
        self.hook_server = hooks.Server(self)  # what hooks may read of us
        self.fork_with = ForkWith(self.listeners, log_, preloaded, self.hook_server, self.pid, self.events.write_fd,
                                  self.own_fds, HANDLED_SIGNALS, self.stacks)
        self.signal_table: dict[int, Callable[[], None]] = {
            signal.SIGHUP: self.handle_hup,  # reload: new generation, then retire the old
            signal.SIGTERM: self.handle_term,  # graceful stop
            signal.SIGINT: self.handle_int,  # fast stop
            signal.SIGQUIT: self.handle_int,  # fast stop
            signal.SIGTTIN: self.handle_ttin,  # one worker more
            signal.SIGTTOU: self.handle_ttou,  # one worker fewer
            signal.SIGUSR1: self.handle_usr1,  # reopen log files
            signal.SIGUSR2: self.handle_usr2,  # binary upgrade
            signal.SIGCHLD: self.reap_workers,  # reap and replace
            signal.SIGWINCH: self.handle_winch,  # from our upgraded successor: retire
        }

    # --- what helpers read (view.ServerView) ---

    settings = property(lambda self: self.gens.settings)
    generation = property(lambda self: self.gens.generation)
    pending = property(lambda self: self.gens.pending)
    pending_settings = property(lambda self: self.gens.pending_settings)
    new_master = property(lambda self: self.upgrade.new_master_pid)
    replaces = property(lambda self: self.upgrade.replaces_pid)

    workers = property(lambda self: self.table.workers)  # pid -> WorkerProcess
    listener_names = property(lambda self: [listener.name for listener in self.listeners.shared])
    stack_report = property(lambda self: self.stacks.answer())

    # --- the loop ---

    def run(self) -> int:
        """Serve until stopped; return the exit status (or raise why the server had to halt)."""
        try:
            self.start()
            while True:
                self.end_shutdown_delay()
                self.manage_workers()
                self.notifier.report(self)
                if self.stopping and not self.workers:
                    break
                self.wait(self.next_timeout())
        finally:
            self.cleanup()
        if self.halt_error is not None:
            raise self.halt_error
        return EXIT_OK

    def start(self) -> None:
        hooks.run("on_starting", self.settings, self.hook_server)
        self.upgrade.replaces = upgraded_from(os.environ)
        self.gens.settings = settings = self.listeners.open(self.settings, os.environ)
        # The title first: control commands take a pid file's process for a master by its title.
        proctitle.set_title(f"master [{settings.proc_name}]")
        if settings.pid:
            self.pidfile = claim(settings.pid, self.pid)
        self.scoreboard.header.master_pid = self.pid
        self.endpoints = control.open_endpoints(self, self.selector, self.pidfile.path if self.pidfile else None)
        self.selector.register(self.wakeup.read_fd, selectors.EVENT_READ, self.dispatch_signals)
        self.selector.register(self.events.read_fd, selectors.EVENT_READ, self.read_worker_events)
        self.selector.register(self.log.pipe_r, selectors.EVENT_READ, self.log.drain_workers)  # workers' log lines
        self.wakeup.install()
        if settings.reload:  # development: a watcher process HUPs us when the code changes
            self.watcher = devreload.start_watcher(self.pid, os.getcwd(), settings.reload_extra_file)
        log.info("master started (pid %d), %d workers, %s", self.pid, self.num_workers, settings.served)
        hooks.run("when_ready", self.settings, self.hook_server)

    def wait(self, timeout: float | None) -> None:
        for key, _ in self.selector.select(timeout):
            key.data()

    def next_timeout(self) -> float | None:
        """Seconds until the next deadline; None (sleep until woken) when there is none."""
        now = time.monotonic()
        settings = self.settings
        deadlines = self.table.deadlines(now, settings.worker_timeout, newest_settings(self).boot_timeout,
                                         settings.max_worker_memory)
        # The boot back-off; the adaptive pool's look at the scoreboard; systemd's WATCHDOG=1; --shutdown-delay;
        # the end of a stack a worker is writing (stacks.py).
        delay = None if self.stopping else self.shutdown_delay_ends
        for deadline in (self.boot.deadline(now), self.pool.deadline(settings), self.notifier.watchdog_deadline(),
                         delay, self.stacks.deadline()):
            if deadline is not None:
                deadlines.append(deadline)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def dispatch_signals(self) -> None:
        for signum in self.wakeup.received():
            handler = self.signal_table.get(signum)
            if handler is not None:
                log.debug("signal %s", signal.Signals(signum).name)
                handler()

    def read_worker_events(self) -> None:
        for pid, event in self.events.read():
            booted = self.table.event(pid, event)
            if booted is not None:
                self.worker_booted(booted)

    # --- signal handlers (called from the loop, never from signal context) ---

    def handle_term(self) -> None:
        """Graceful stop, after --shutdown-delay; a TERM during the delay ends it, one during the stop makes it fast."""
        delay = self.settings.shutdown_delay
        if self.stopping:
            log.info("second stop signal: stopping fast")
            self.stop_all(Stop.FAST)
        elif self.shutdown_delay_ends is not None:
            log.info("TERM during the shutdown delay: stopping now")
            self.stop_gracefully()
        elif delay:
            self.shutdown_delay_ends = time.monotonic() + delay
            log.info("shutdown delay: serving normally for %gs before stopping", delay)
            self.notifier.stopping(self)
        else:
            self.stop_gracefully()

    def end_shutdown_delay(self) -> None:
        if self.shutdown_delay_ends is not None and not self.stopping and time.monotonic() >= self.shutdown_delay_ends:
            self.stop_gracefully()

    def stop_gracefully(self) -> None:
        log.info("graceful stop: finishing the connections in flight and queued (up to %gs)",
                 self.settings.graceful_timeout)
        self.stop_all(Stop.GRACEFUL)

    def handle_int(self) -> None:
        log.info("fast stop")
        self.stop_all(Stop.FAST)

    def handle_ttin(self) -> None:
        if not self.stopping:
            self.num_workers += 1
            log.info("TTIN: %d workers", self.num_workers)

    def handle_ttou(self) -> None:
        if not self.stopping:
            self.num_workers = max(1, self.num_workers - 1)
            log.info("TTOU: %d workers", self.num_workers)

    def handle_usr1(self) -> None:
        self.log.reopen()
        log.info("USR1: log files reopened")
        self.table.signal_all(signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """Binary upgrade: start a new master on our listeners; it tells us (WINCH) when it serves."""
        if self.stopping or self.shutdown_delay_ends is not None or self.upgrade.under_way:
            log.warning("USR2 ignored: %s", "an upgrade is under way" if self.upgrade.under_way else "stopping")
        elif not self.upgrade.start(self.listeners.shared, self.notifier.environment(), self.pidfile,
                                    HANDLED_SIGNALS, self.new_master_exited):
            self.reclaim_control_socket()

    def new_master_exited(self) -> None:
        """The new master's pidfd turned readable (it is not our child: no SIGCHLD tells us)."""
        if self.upgrade.new_master_exited(self.pidfile, bool(self.stopping)):
            self.reclaim_control_socket()

    def handle_winch(self) -> None:
        """From our upgraded successor (once it serves): retire; from a terminal resize: nothing."""
        if not self.stopping and self.upgrade.replaced(self.notifier, self.settings.proc_name):
            self.listeners.let_go()  # the new master holds them now: never unlink
            self.stop_all(Stop.GRACEFUL)

    def handle_hup(self) -> None:
        if self.stopping:
            return
        self.notifier.reloading(self)
        new = self.gens.reload(self, self.reload_settings, self.log, self.preloaded is not None)
        if new is not None:
            self.num_workers = new.workers
            self.boot.reset()
            hooks.run("on_reload", new, self.hook_server)

    def abandon_pending(self, why: str, failed: bool = True) -> None:
        self.gens.abandon(why, failed)
        self.num_workers = self.settings.workers

    # --- workers ---

    def manage_workers(self) -> None:
        """Bring the worker table to what it should be; called after every wake-up."""
        graceful = self.settings.graceful_timeout
        self.stacks.flush_due(time.monotonic())
        if not self.stopping:
            self.table.check(self.settings.worker_timeout, newest_settings(self).boot_timeout,
                             self.settings.max_worker_memory)
        self.table.kill_overdue(graceful)
        if self.stopping:
            return
        size = self.pool.adjust(self, time.monotonic())
        if size is not None:
            self.num_workers = size
        self.spawn_missing_workers()
        self.table.retire_surplus(self.num_workers, graceful)
        self.gens.retire_replaced(graceful)
        if self.pending is not None and generation_booted(self, self.pending):
            self.gens.commit(self)

    def spawn_missing_workers(self) -> None:
        generation = self.gens.target()
        self.table.spawn_missing(generation, self.gens.missing(self), self.boot, settings_for(self, generation),
                                 self.gens.context_for(generation), self.fork_with)

    def own_fds(self) -> tuple[int, ...]:
        """Our descriptors that a worker closes first thing (pipes, selector, control and metrics sockets, and
        the pid file: a worker must neither write it nor keep its lock)."""
        endpoint_fds = (fd for endpoint in self.endpoints for fd in endpoint.fds())
        pidfile_fds = self.pidfile.fds() if self.pidfile else []
        return (self.wakeup.read_fd, self.wakeup.write_fd, self.events.read_fd, self.selector.fileno(), *endpoint_fds,
                *pidfile_fds, *self.stacks.fds())

    def worker_booted(self, worker: WorkerProcess) -> None:
        self.boot.booted()
        log.info("%s booted", worker.describe())
        self.notifier.report(self)  # READY (and MAINPID after an upgrade) before the old master retires
        if self.replaces is not None and generation_booted(self, self.generation):
            self.upgrade.tell_replaced_master()

    def reap_workers(self) -> None:
        for pid, status, worker in self.table.reap():
            if self.watcher is not None and pid == self.watcher.pid and not self.stopping:
                log.warning("--reload: the file watcher exited (%s); code changes no longer reload",
                            describe_status(status))
            elif worker is not None:
                # Stop.KILL before booting: killed by --boot-timeout, which is a failed boot too.
                if not worker.booted and worker.stopping in (None, Stop.KILL):
                    self.boot_failed(worker, status)
                self.listeners.close_slots(self.num_workers, self.table.indexes())
                hooks.run("worker_exit", self.settings, self.hook_server, hooks.WorkerInfo.of(worker))

    def boot_failed(self, worker: WorkerProcess, status: int) -> None:
        self.stats.boot_failures += 1
        failure = self.boot.failed(worker, status, self.pending, self.stopping is not None, self.settings.served)
        if isinstance(failure, PreforkError):
            self.halt(failure)
        elif failure is not None:  # a worker of the generation on trial: the reload fails
            self.abandon_pending(failure)
            self.notifier.reload_failed(self, failure)

    def reclaim_control_socket(self) -> None:
        """After a failed upgrade: the new master may have taken our control socket's path."""
        if self.pidfile is not None:
            self.endpoints = control.reclaim_control_socket(self, self.endpoints, self.selector, self.pidfile.path)

    # --- stop and exit ---

    def halt(self, error: Exception) -> None:
        self.halt_error = error
        log.error("%s", error)
        self.stop_all(Stop.FAST)

    def stop_all(self, how: Stop) -> None:
        first = self.stopping is None
        self.stopping = Stop.FAST if how is Stop.FAST else (self.stopping or Stop.GRACEFUL)
        if first:
            # Workers drain what the kernel queued, then leave (unless another master shares our sockets).
            self.scoreboard.header.shutting_down = int(not self.upgrade.under_way)
            self.listeners.stop_serving(shared_with_another_master=self.upgrade.under_way)
        self.table.stop_all(how, self.settings.graceful_timeout)
        if first:
            self.notifier.stopping(self)  # after stopping the workers: the drain's deadlines are known

    def cleanup(self) -> None:
        self.wakeup.restore()
        lost = self.listeners.still_queued()
        if lost:  # the graceful timeout ran out (or a fast stop) with connections still queued
            log.warning("%d queued connection%s closed unserved", lost, "s" if lost != 1 else "")
        if self.watcher is not None and self.watcher.poll() is None:
            self.watcher.terminate()
        self.listeners.close_all()
        if self.pidfile is not None:
            self.pidfile.remove()
        for endpoint in self.endpoints:
            endpoint.close()
        self.upgrade.forget_new_master()
        self.stacks.close()
        self.selector.close()
        self.events.close()
        hooks.run("on_exit", self.settings, self.hook_server)
        log.info("master exiting")

