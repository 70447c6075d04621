"""The master: forks workers, replaces the dead and the stuck, and obeys signals.

The master never touches a connection and never blocks on anything but its
selector. Signal handlers do nothing themselves: ``signal.set_wakeup_fd``
writes each signal's number into a pipe, and the loop reads it and dispatches
through :attr:`Master.signal_table`, the whole signal policy on one screen.
What it does to workers lives in ``worker_table.py``, reloads in ``reload.py``,
the binary upgrade in ``upgrade.py``, the boot back-off in ``boot.py``, the
worker count in ``worker_count.py``, the control socket and metrics in
``control.py``, and ``--reload``'s watcher in ``devreload.py``. Those helpers never
get the Master: they read its view, ``master_view.MasterView``, built from its parts.
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
from .errors import EXIT_OK, PreforkError
from .events import EventPipe
from .listeners import Listeners
from .log import AccessLogFile, Log
from .master_view import MasterFds, MasterView
from .peer import Handler
from .pidfile import Pidfile, claim
from .pool import Pool
from .reload import Generations
from .scoreboard import Scoreboard
from .settings import Settings
from .shutdown_delay import ShutdownDelay
from .stacks import Stacks
from .stats import Stats
from .systemd import Notifier
from .upgrade import Upgrade, upgraded_from
from .view import Stop, StopState, WorkerProcess, generation_booted, worker_limits
from .wakeup import Wakeup
from .worker_count import WorkerCount
from .worker_table import ForkWith, WorkerTable

if TYPE_CHECKING:
    from ssl import SSLContext

log = logging.getLogger("prefork")

HANDLED_SIGNALS = (
    signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGWINCH,
)


class Master:
    """The supervisor process. :meth:`run` returns the exit status or raises a PreforkError."""

    def __init__(self, settings: Settings, log_: Log, reload_settings: Callable[[], Settings],
                 preloaded: Handler | None = None, tls_context: SSLContext | None = None,
                 access_log: AccessLogFile | None = None) -> None:
        self.log = log_
        self.reload_settings = reload_settings
        self.preloaded = preloaded
        self.pid = os.getpid()
        self.count = WorkerCount(settings.workers)  # TTIN/TTOU, a reload, the pool (which only returns a size)
        self.stats = Stats()  # counters for status and metrics
        self.scoreboard = Scoreboard(max(1024, settings.workers * 4))
        self.table = WorkerTable(self.scoreboard, self.stats)  # pid -> WorkerProcess, and what to do to them
        self.boot = BootPolicy(self.stats)
        self.listeners = Listeners()
        self.notifier = Notifier.from_environment(os.environ)  # systemd; takes NOTIFY_SOCKET out of it
        # Which generation serves, and the one on trial during a reload.
        self.gens = Generations(settings, self.listeners, self.table, self.stats, self.notifier, self.count,
                                tls_context, access_log)
        self.pidfile: Pidfile | None = None
        self.watcher = devreload.Watcher(self.pid)  # --reload's file watcher process
        self.stop = StopState()  # how the server stops (None while it serves); the view and the upgrade read it
        self.delay = ShutdownDelay()  # after TERM with --shutdown-delay: serving until it ends
        self.halt_error: Exception | None = None
        self.pool = Pool()  # --max-workers: decides the worker count from the scoreboard
        self.selector = selectors.DefaultSelector()
        self.upgrade = Upgrade(self.selector, self.stop)  # the successor a USR2 started, or whom we replace
        self.stacks = Stacks(self.selector)  # the workers' faulthandler pipes
        # What helpers read of us, from the parts that own each fact: they never get the Master itself.
        self.view = MasterView(self.pid, self.gens, self.count, self.table, self.stop, self.delay, self.upgrade,
                               self.listeners, self.stacks)
        self.endpoints = control.Endpoints(self.view, self.selector)  # control socket, metrics: answered in our loop
        self.wakeup = Wakeup(HANDLED_SIGNALS)
        self.events = EventPipe()
        self.hook_server = hooks.Server(self.view)  # what hooks may read of us
        pipes = (self.wakeup.read_fd, self.wakeup.write_fd, self.events.read_fd, self.selector.fileno())
        self.fds = MasterFds(pipes, self.endpoints, self.stacks)  # what a worker closes first thing
        self.fork_with = ForkWith(self.listeners, log_, preloaded, self.hook_server, self.pid, self.events.write_fd,
                                  self.fds.now, HANDLED_SIGNALS, self.stacks)
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

    # --- the loop ---

    def run(self) -> int:
        """Serve until stopped; return the exit status (or raise why the server had to halt)."""
        try:
            self.start()
            while True:
                self.end_shutdown_delay()
                self.manage_workers()
                self.notifier.report(self.view)
                if self.stop.how and not self.table.workers:
                    break
                for key, _ in self.selector.select(self.next_timeout()):
                    key.data()  # a signal, a worker's event or log line, a control request, ...
        finally:
            self.cleanup()
        if self.halt_error is not None:
            raise self.halt_error
        return EXIT_OK

    def start(self) -> None:
        hooks.run("on_starting", self.gens.settings, self.hook_server)
        self.upgrade.replaces = upgraded_from(os.environ)
        self.gens.settings = settings = self.listeners.open(self.gens.settings, os.environ)
        # The title first: control commands take a pid file's process for a master by its title.
        proctitle.set_title(f"master [{settings.proc_name}]")
        if settings.pid:
            self.pidfile = self.fds.pidfile = claim(settings.pid, self.pid)
        self.scoreboard.header.master_pid = self.pid
        self.endpoints.start(self.pidfile.path if self.pidfile else None)
        self.selector.register(self.wakeup.read_fd, selectors.EVENT_READ, self.dispatch_signals)
        self.selector.register(self.events.read_fd, selectors.EVENT_READ, self.read_worker_events)
        self.selector.register(self.log.pipe_r, selectors.EVENT_READ, self.log.drain_workers)  # workers' log lines
        self.wakeup.install()
        self.watcher.start(settings)  # --reload (development): a watcher process HUPs us when the code changes
        log.info("master started (pid %d), %d workers, %s", self.pid, self.count.target, settings.served)
        hooks.run("when_ready", self.gens.settings, self.hook_server)

    def next_timeout(self) -> float | None:
        """Seconds until the next deadline; None (sleep until woken) when there is none."""
        now = time.monotonic()
        deadlines = self.table.deadlines(now, worker_limits(self.view))  # kills due, --timeout, --boot-timeout, memory
        # The boot back-off; systemd's WATCHDOG=1; the end of a stack a worker is writing (stacks.py). Only while
        # serving (manage_workers skips them once stopping: a deadline left in the past would never let us sleep):
        # the adaptive pool's look at the scoreboard, the end of --shutdown-delay, starting --reload's watcher again.
        serving = () if self.stop.how else (self.pool.deadline(self.gens.settings), self.delay.ends,
                                            self.watcher.deadline())
        for deadline in (self.boot.deadline(now), self.notifier.watchdog_deadline(), self.stacks.deadline(), *serving):
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
                self.boot.booted(booted)
                self.notifier.report(self.view)  # READY (and MAINPID after an upgrade) before the old master retires
                self.upgrade.tell_replaced_master(self.view)

    # --- signal handlers (called from the loop, never from signal context) ---

    def handle_term(self) -> None:
        """Graceful stop, after --shutdown-delay; a TERM during the delay ends it, one during the stop makes it fast."""
        if self.stop.how:
            log.info("second stop signal: stopping fast")
            self.stop_all(Stop.FAST)
        elif self.delay.begin(self.gens.settings.shutdown_delay):
            self.notifier.stopping(self.view)  # systemd and a readiness check hear it from the TERM on
        else:
            self.stop_gracefully()

    def end_shutdown_delay(self) -> None:
        if self.delay.over(time.monotonic()) and not self.stop.how:
            self.stop_gracefully()

    def stop_gracefully(self) -> None:
        log.info("graceful stop: finishing the connections in flight and queued (up to %gs)",
                 self.gens.settings.graceful_timeout)
        self.stop_all(Stop.GRACEFUL)

    def handle_int(self) -> None:
        log.info("fast stop")
        self.stop_all(Stop.FAST)

    def handle_ttin(self) -> None:
        if not self.stop.how:
            self.count.more()

    def handle_ttou(self) -> None:
        if not self.stop.how:
            self.count.fewer()

    def handle_usr1(self) -> None:
        self.log.reopen()
        self.gens.reopen_access_logs()
        log.info("USR1: log files reopened")
        self.table.signal_all(signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """Binary upgrade: start a new master on our listeners; it tells us (WINCH) when it serves."""
        if self.stop.how or self.delay.ends is not None or self.upgrade.under_way:
            log.warning("USR2 ignored: %s", "an upgrade is under way" if self.upgrade.under_way else "stopping")
        else:
            self.upgrade.start(self.listeners.shared, self.notifier.environment(), self.pidfile, self.endpoints,
                               HANDLED_SIGNALS)

    def handle_winch(self) -> None:
        """From our upgraded successor (once it serves): retire; from a terminal resize: nothing."""
        if not self.stop.how and self.upgrade.replaced(self.notifier, self.gens.settings.proc_name):
            self.listeners.let_go()  # the new master holds them now: never unlink
            self.stop_all(Stop.GRACEFUL)

    def handle_hup(self) -> None:
        if self.stop.how:
            return
        new = self.gens.reload(self.view, self.reload_settings, self.log, self.preloaded is not None)
        if new is not None:
            self.boot.reset()
            hooks.run("on_reload", new, self.hook_server)

    # --- workers ---

    def manage_workers(self) -> None:
        """Bring the worker table (and --reload's watcher) to what it should be; called after every wake-up."""
        graceful = self.gens.settings.graceful_timeout
        self.stacks.flush_due(time.monotonic())
        self.table.check(worker_limits(self.view))  # none once stopping
        self.table.kill_overdue(graceful)
        if self.stop.how:
            return
        self.watcher.restart_if_due(time.monotonic())
        self.count.follow(self.pool.adjust(self.view, time.monotonic()))
        self.gens.spawn_missing(self.view, self.boot, self.fork_with)  # of the generation being worked towards
        self.table.retire_surplus(self.count.target, graceful)
        self.gens.retire_replaced(graceful)
        if self.gens.pending is not None and generation_booted(self.view, self.gens.pending):
            self.gens.commit(self.view)

    def reap_workers(self) -> None:
        for pid, status, worker in self.table.reap():
            if worker is None:  # our only other child: --reload's watcher
                self.watcher.exited(pid, status, self.stop.how is not None)
            else:
                # Stop.KILL before booting: killed by --boot-timeout, which is a failed boot too.
                if not worker.booted and worker.stopping in (None, Stop.KILL):
                    self.boot_failed(worker, status)
                self.listeners.close_slots(self.count.target, self.table.indexes())
                hooks.run("worker_exit", self.gens.settings, self.hook_server, hooks.WorkerInfo.of(worker))

    def boot_failed(self, worker: WorkerProcess, status: int) -> None:
        failure = self.boot.failed(worker, status, self.view)
        if isinstance(failure, PreforkError):
            self.halt(failure)
        elif failure is not None:  # a worker of the generation on trial: the reload fails
            self.gens.abandon(self.view, failure)

    # --- stop and exit ---

    def halt(self, error: Exception) -> None:
        self.halt_error = error
        log.error("%s", error)
        self.stop_all(Stop.FAST)

    def stop_all(self, how: Stop) -> None:
        first = self.stop.escalate(how)
        if first:
            # Workers drain what the kernel queued, then leave (unless another master shares our sockets).
            self.scoreboard.header.shutting_down = int(not self.upgrade.under_way)
            self.listeners.stop_serving(shared_with_another_master=self.upgrade.under_way)
        self.table.stop_all(how, self.gens.settings.graceful_timeout)
        if first:
            self.notifier.stopping(self.view)  # after stopping the workers: the drain's deadlines are known

    def cleanup(self) -> None:
        self.wakeup.restore()
        self.watcher.stop()
        self.listeners.close_all()
        if self.pidfile is not None:
            self.pidfile.remove()
        self.endpoints.close()
        self.upgrade.forget_new_master()
        self.stacks.close()
        self.selector.close()
        self.events.close()
        hooks.run("on_exit", self.gens.settings, self.hook_server)
        log.info("master exiting")

