"""The master: forks workers, replaces the dead and the stuck, and obeys signals.

The master never touches a connection and never blocks on anything but its
selector. Signal handlers do nothing themselves: ``signal.set_wakeup_fd``
writes each signal's number into a pipe, and the loop reads it and dispatches
through :attr:`Master.signal_table`, the whole signal policy on one screen.
"""

from __future__ import annotations

import gc
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from . import control, hooks, privileges, proctitle
from .endpoint import Endpoint
from .errors import EXIT_APP, EXIT_BOOT, EXIT_OK, WORKER_EXIT_APP, AppImportError, BootError, ConfigError
from .importer import Handler
from .listeners import Listeners
from .log import Log
from .pidfile import Pidfile
from .pool import Pool
from .scoreboard import BUSY, Scoreboard
from .settings import Settings, start_only_changes
from .status import RESTART_DIED, RESTART_MAX_REQUESTS, RESTART_MEMORY, RESTART_TIMEOUT, Stats
from .systemd import Notifier
from .threaded import ThreadedWorker, any_threaded, make_nonblocking
from .upgrade import spawn_new_master, upgraded_from
from .worker import EVENT, EVENT_BOOTED, EVENT_RETIRE, Worker

log = logging.getLogger("prefork")

HANDLED_SIGNALS = (
    signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGWINCH,
)
MAX_BOOT_FAILURES = 5  # in a row, before any worker ever booted: give up with EXIT_BOOT
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
FAST_STOP_GRACE = 0.5  # seconds between QUIT and SIGKILL
STUCK_KILL_GRACE = 1.0  # seconds between SIGABRT (traceback) and SIGKILL
MEMORY_CHECK_INTERVAL = 5.0


@dataclass
class WorkerProcess:
    """The master's record of one worker it forked."""

    pid: int
    index: int
    generation: int
    slot: int
    started: float  # time.monotonic()
    booted: bool = False
    stopping: str = ""  # "", "graceful", "fast" or "kill"
    kill_at: float | None = None
    replace: bool = False  # retire once a replacement for this index has booted
    exit_status: int | None = None  # the raw waitpid() status once reaped (for the worker_exit hook)

    def describe(self) -> str:
        return f"worker {self.index} gen {self.generation} (pid {self.pid})"


class Master:
    """The supervisor process. :meth:`run` returns the exit status or raises a PreforkError."""

    def __init__(
        self,
        settings: Settings,
        log_: Log,
        reload_settings: Callable[[], Settings],
        preloaded: Handler | None = None,
    ) -> None:
        self.settings = settings
        self.log = log_
        self.reload_settings = reload_settings
        self.preloaded = preloaded
        self.pid = os.getpid()
        self.num_workers = settings.workers
        self.workers: dict[int, WorkerProcess] = {}
        self.generation = 1
        self.pending: int | None = None  # a generation on trial during a reload
        self.pending_settings: Settings | None = None
        self.listeners = Listeners()
        self.scoreboard = Scoreboard(max(1024, settings.workers * 4))
        self.pidfile: Pidfile | None = None
        self.ever_booted = False
        self.boot_failures = 0
        self.spawn_not_before = 0.0
        self.next_memory_check = 0.0
        self.stopping = ""  # "", "graceful" or "fast"
        self.new_master: int | None = None  # pid of the master a USR2 upgrade started
        self.replaces: int | None = None  # pid of the master we were started to replace
        self.halt_error: Exception | None = None
        self.notifier = Notifier.from_environment(os.environ)  # systemd; takes NOTIFY_SOCKET out of it
        self.stats = Stats()  # counters for status and metrics
        self.pool = Pool()  # --max-workers: sets num_workers from the scoreboard
        self.endpoints: list[Endpoint] = []  # control socket, metrics: answered in our loop
        self.selector = selectors.DefaultSelector()
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.events_r, self.events_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.events_r, False)
        self.events_buffer = b""
        self.signal_table: dict[int, Callable[[], None]] = {
            signal.SIGHUP: self.handle_hup,  # reload: new generation, then retire the old
            signal.SIGTERM: self.handle_term,  # graceful stop
            signal.SIGINT: self.handle_int,  # fast stop
            signal.SIGQUIT: self.handle_int,  # fast stop
            signal.SIGTTIN: self.handle_ttin,  # one worker more
            signal.SIGTTOU: self.handle_ttou,  # one worker fewer
            signal.SIGUSR1: self.handle_usr1,  # reopen log files
            signal.SIGUSR2: self.handle_usr2,  # binary upgrade
            signal.SIGCHLD: self.handle_chld,  # reap and replace
            signal.SIGWINCH: self.handle_winch,  # from our upgraded successor: retire
        }

    # --- the loop ---

    def run(self) -> int:
        """Serve until stopped; return the exit status (or raise why the server had to halt)."""
        try:
            self.start()
            while True:
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
        settings = self.settings
        hooks.run("on_starting", settings, self)
        self.replaces = upgraded_from(os.environ)
        self.settings = settings = self.listeners.open(settings, os.environ)
        # The title first: control commands take a pid file's process for a master by its title.
        proctitle.set_title(f"master [{settings.proc_name}]")
        if settings.pid:
            self.pidfile = Pidfile(settings.pid)
            try:
                self.pidfile.write(self.pid)
            except OSError as exc:
                self.pidfile = None
                raise ConfigError(f"pid: cannot write {settings.pid!r}: {exc.strerror}") from None
        self.scoreboard.header.master_pid = self.pid
        self.endpoints = control.open_endpoints(self)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, self.dispatch_signals)
        self.selector.register(self.events_r, selectors.EVENT_READ, self.read_worker_events)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, _record_only)
        log.info("master started (pid %d), %d workers, app %s", self.pid, self.num_workers, settings.app)
        hooks.run("when_ready", self.settings, self)

    def wait(self, timeout: float | None) -> None:
        for key, _ in self.selector.select(timeout):
            key.data()

    def next_timeout(self) -> float | None:
        """Seconds until the next deadline; None (sleep until woken) when there is none."""
        now = time.monotonic()
        deadlines = [w.kill_at for w in self.workers.values() if w.kill_at is not None]
        if self.spawn_not_before > now:
            deadlines.append(self.spawn_not_before)
        if self.workers and self.settings.timeout:
            deadlines.append(self.next_stuck_check(now))
        pool = self.pool.deadline(self.settings)
        if pool is not None:
            deadlines.append(pool)  # the adaptive pool reads the scoreboard once a second
        if self.workers and self.settings.max_worker_memory:
            deadlines.append(self.next_memory_check)
        watchdog = self.notifier.watchdog_deadline()
        if watchdog is not None:
            deadlines.append(watchdog)  # systemd's WATCHDOG=1, sent from this loop
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def next_stuck_check(self, now: float) -> float:
        """When a worker could next have overrun --timeout.

        A busy worker overruns at busy_since + timeout; one that is idle now cannot
        overrun before now + timeout. So an idle server wakes once per --timeout
        instead of every second, and a stuck worker is still caught on time.
        """
        timeout = self.settings.timeout
        deadline = now + timeout
        for worker in self.workers.values():
            slot = self.scoreboard.slots[worker.slot]
            if worker.stopping == "kill":
                continue
            if not worker.booted:
                deadline = min(deadline, worker.started + timeout)
            elif slot.state == BUSY:
                deadline = min(deadline, slot.busy_since + timeout)
        return deadline + 0.01  # just past it, so the check sees the overrun

    def dispatch_signals(self) -> None:
        try:
            received = os.read(self.wakeup_r, 4096)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(received):  # in order, each once
            handler = self.signal_table.get(signum)
            if handler is not None:
                log.debug("signal %s", signal.Signals(signum).name)
                handler()

    def read_worker_events(self) -> None:
        try:
            self.events_buffer += os.read(self.events_r, EVENT.size * 512)
        except BlockingIOError:
            return
        usable = len(self.events_buffer) - len(self.events_buffer) % EVENT.size
        for pid, event in EVENT.iter_unpack(self.events_buffer[:usable]):
            worker = self.workers.get(pid)
            if worker is None:
                continue
            if event == EVENT_BOOTED:
                self.worker_booted(worker)
            elif event == EVENT_RETIRE and not worker.replace:
                worker.replace = True
                self.stats.restart(RESTART_MAX_REQUESTS)
        self.events_buffer = self.events_buffer[usable:]

    # --- signal handlers (called from the loop, never from signal context) ---

    def handle_chld(self) -> None:
        self.reap_workers()

    def handle_term(self) -> None:
        if self.stopping:
            log.info("second stop signal: stopping fast")
            self.stop_all("fast")
        else:
            log.info("graceful stop: finishing connections (up to %gs)", self.settings.graceful_timeout)
            self.stop_all("graceful")

    def handle_int(self) -> None:
        log.info("fast stop")
        self.stop_all("fast")

    def handle_ttin(self) -> None:
        if self.stopping:
            return
        self.num_workers += 1
        log.info("TTIN: %d workers", self.num_workers)

    def handle_ttou(self) -> None:
        if self.stopping:
            return
        if self.num_workers > 1:
            self.num_workers -= 1
        log.info("TTOU: %d workers", self.num_workers)

    def handle_usr1(self) -> None:
        self.log.reopen()
        self.give_log_to_workers(self.settings)
        log.info("USR1: log files reopened")
        self.signal_workers(signal.SIGUSR1)

    def give_log_to_workers(self, settings: Settings) -> None:
        """A new log file is created as the master's user: let --user workers reopen it too."""
        try:
            privileges.give_to(privileges.resolve(settings.user, settings.group), [settings.log_file])
        except ConfigError as exc:
            log.error("%s; workers running as %s may not reopen it", exc, settings.user)

    def switch_log(self, new: Settings) -> None:
        """HUP: reopen the log file, or move to the one the new settings name (ConfigError if it cannot open)."""
        try:
            self.log.use(new.log_file)
        except OSError as exc:
            raise ConfigError(f"log_file: cannot open {new.log_file!r}: {exc.strerror}") from None
        self.give_log_to_workers(new)

    def handle_usr2(self) -> None:
        """Binary upgrade: start a new master on our listeners; it tells us (WINCH) when it serves."""
        if self.stopping or self.new_master is not None or self.replaces is not None:
            log.warning("USR2 ignored: %s", "stopping" if self.stopping else "an upgrade is under way")
            return
        if self.pidfile is not None:
            self.pidfile.rename(self.pidfile.path + ".oldbin")
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            self.new_master = spawn_new_master(self.listeners.shared, self.notifier.environment())
        except OSError as exc:
            log.error("upgrade failed: cannot start a new master: %s", exc.strerror)
            self.upgrade_failed()
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("upgrade: started new master (pid %d); serving until it is ready", self.new_master)

    def handle_winch(self) -> None:
        """Our upgraded successor serves: retire our workers gracefully and exit.

        WINCH also comes from terminal resizes, so it means nothing unless we started an upgrade.
        """
        if self.new_master is None or self.stopping:
            return
        log.info("upgrade: new master (pid %d) is serving; retiring this one", self.new_master)
        self.notifier.hand_over()  # it speaks for the service now: our STOPPING=1 would stop it too
        proctitle.set_title(f"master (old) [{self.settings.proc_name}]")
        self.listeners.let_go()  # the new master holds them now: never unlink
        self.stop_all("graceful")

    def upgrade_failed(self, why: str = "") -> None:
        if why:
            log.error("upgrade failed: new master %s; this master keeps serving", why)
        self.new_master = None
        if self.pidfile is not None and self.pidfile.path.endswith(".oldbin"):
            self.pidfile.rename(self.pidfile.path[: -len(".oldbin")])
        control.reclaim_control_socket(self)  # the failed new master may have taken its path

    def tell_replaced_master(self) -> None:
        """After an upgrade, once our first generation serves, ask the old master to retire."""
        if self.replaces is None:
            return
        log.info("upgrade: serving; asking the old master (pid %d) to retire", self.replaces)
        try:
            os.kill(self.replaces, signal.SIGWINCH)
        except ProcessLookupError:
            pass
        self.replaces = None

    def handle_hup(self) -> None:
        if self.stopping:
            return
        self.notifier.reloading(self)
        try:
            new = self.reload_settings()
            hooks.import_hooks(new)
            self.switch_log(new)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.notifier.reload_failed(self, str(exc))
            self.stats.reload_failed(str(exc))
            return
        if self.preloaded is not None:
            log.warning("--preload: new workers reuse the app loaded at start (%s); "
                        "only a binary upgrade (USR2) loads new app code", self.settings.app)
        unchanged = start_only_changes(self.settings, new)
        if unchanged:
            log.warning("reload: %s only take effect when the master starts (USR2 or restart)", ", ".join(unchanged))
        self.apply_reload(new)

    # --- reload ---

    def apply_reload(self, new: Settings) -> None:
        """Start a new generation with ``new``; the old one serves until it has booted."""
        if self.pending is not None:
            self.abandon_pending("superseded by a newer reload", failed=False)
        try:
            new = self.listeners.open_added(new)
        except Exception as exc:  # BindError and friends: keep serving as we were
            log.error("reload refused: %s", exc)
            self.notifier.reload_failed(self, str(exc))
            self.stats.reload_failed(str(exc))
            return
        self.pending = self.generation + 1 if self.pending is None else self.pending + 1
        self.pending_settings = new
        self.num_workers = new.workers
        self.log.set_level(new.log_level)
        self.boot_failures = 0
        self.spawn_not_before = 0.0
        log.info("reloading: starting generation %d (%d workers)", self.pending, self.num_workers)
        hooks.run("on_reload", new, self)

    def commit_pending(self) -> None:
        assert self.pending is not None and self.pending_settings is not None
        old = self.generation
        self.generation, self.settings = self.pending, self.pending_settings
        self.pending, self.pending_settings = None, None
        self.listeners.close_unlisted(self.settings, say=True)
        self.stats.reloads += 1
        retiring = [w for w in self.workers.values() if w.generation != self.generation and not w.stopping]
        log.info("reload done: generation %d serving, retiring %d workers of generation %d",
                 self.generation, len(retiring), old)
        for worker in retiring:
            self.stop_worker(worker, "graceful")
        self.notifier.ready(self)

    def abandon_pending(self, why: str, failed: bool = True) -> None:
        """Give up the generation on trial; the serving one goes on as if nothing happened."""
        if failed:
            log.error("reload failed: %s; generation %d keeps serving", why, self.generation)
            self.stats.reload_failed(why)
        else:
            log.info("generation %d %s", self.pending, why)
        for worker in list(self.workers.values()):
            if worker.generation == self.pending and not worker.stopping:
                # Gracefully: its booted workers already accept, and may be serving someone.
                self.stop_worker(worker, "graceful")
        if self.pending_settings is not None:
            self.listeners.close_unlisted(self.settings, say=False)
        self.pending, self.pending_settings = None, None
        self.num_workers = self.settings.workers

    # --- workers: spawn, boot, reap, stop ---

    def manage_workers(self) -> None:
        """Bring the worker table to what it should be; called after every wake-up."""
        if self.stopping:
            self.kill_overdue()
            return
        self.check_workers()
        self.kill_overdue()
        self.pool.adjust(self, time.monotonic())
        self.spawn_missing_workers()
        self.retire_surplus()
        self.retire_replaced()
        if self.pending is not None and self.generation_booted(self.pending):
            self.commit_pending()

    def target_generation(self) -> int:
        return self.pending if self.pending is not None else self.generation

    def spawn_missing_workers(self) -> None:
        generation = self.target_generation()
        have = {w.index for w in self.workers.values()
                if w.generation == generation and not w.stopping and not w.replace}
        missing = [index for index in range(self.num_workers) if index not in have]
        if not missing or time.monotonic() < self.spawn_not_before:
            return
        for index in missing:
            self.spawn_worker(index, generation)

    def spawn_worker(self, index: int, generation: int) -> None:
        slot = self.scoreboard.allocate(0, index, generation)
        if slot is None:
            log.error("scoreboard full (%d slots): not starting worker %d", self.scoreboard.capacity, index)
            return
        settings = self.pending_settings if generation == self.pending and self.pending_settings else self.settings
        listeners = self.listeners.for_worker(index, settings)
        if settings.threads > 1 or any_threaded(self):
            make_nonblocking(listeners)  # threads wait in epoll, never in a blocking accept()
        record = WorkerProcess(0, index, generation, slot, time.monotonic())
        hooks.run("pre_fork", settings, self, record)
        if self.preloaded is not None:
            # Move everything the app allocated out of the collector's reach, so that a
            # collection in a worker does not write to (and so copy) the pages it shares.
            gc.freeze()
        # Block our signals across fork: the child must not run the master's handlers
        # (nor write to its wake-up pipe) before installing its own.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.scoreboard.release(slot)
            log.error("fork failed: %s", exc.strerror)
            self.spawn_not_before = time.monotonic() + 1.0
            return
        if pid == 0:
            try:
                (ThreadedWorker if settings.threads > 1 else Worker)(
                    settings=settings, listeners=listeners, scoreboard=self.scoreboard,
                    slot_number=slot, index=index, generation=generation, master_pid=self.pid,
                    events_fd=self.events_w, log_=self.log, handler=self.preloaded,
                    close_fds=[self.wakeup_r, self.wakeup_w, self.events_r, self.selector.fileno(),
                               *(fd for endpoint in self.endpoints for fd in endpoint.fds())],
                    foreign=[lst for lst in self.listeners.all() if lst not in listeners],
                    server=self,
                ).run()
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.scoreboard.slots[slot].pid = pid
        record.pid, record.started = pid, time.monotonic()
        self.workers[pid] = record
        log.debug("spawned worker %d gen %d (pid %d)", index, generation, pid)

    def worker_booted(self, worker: WorkerProcess) -> None:
        worker.booted = True
        self.ever_booted = True
        self.boot_failures = 0
        log.info("%s booted", worker.describe())
        self.notifier.report(self)  # READY (and MAINPID after an upgrade) before the old master retires
        if self.replaces is not None and self.generation_booted(self.generation):
            self.tell_replaced_master()

    def generation_booted(self, generation: int) -> bool:
        booted = {w.index for w in self.workers.values()
                  if w.generation == generation and w.booted and not w.stopping}
        return all(index in booted for index in range(self.num_workers))

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.new_master:
                self.new_master_exited(status)
                continue
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self.stats.worker_gone(self.scoreboard.slots[worker.slot])
                self.scoreboard.release(worker.slot)
                self.worker_exited(worker, status)
                worker.exit_status = status
                hooks.run("worker_exit", self.settings, self, worker)

    def new_master_exited(self, status: int) -> None:
        if self.stopping:
            self.new_master = None  # we were retiring anyway
        else:
            self.upgrade_failed(f"exited before it was ready ({describe_status(status)})")

    def worker_exited(self, worker: WorkerProcess, status: int) -> None:
        why = describe_status(status)
        if worker.stopping:
            log.info("%s exited (%s)", worker.describe(), why)
        elif worker.booted:
            log.warning("%s died (%s); replacing it", worker.describe(), why)
            self.stats.restart(RESTART_DIED)
        else:
            self.boot_failed(worker, status, why)
        self.listeners.close_slots(self.num_workers, {w.index for w in self.workers.values()})

    def boot_failed(self, worker: WorkerProcess, status: int, why: str) -> None:
        self.boot_failures += 1
        self.stats.boot_failures += 1
        if worker.generation == self.pending:
            failure = f"{worker.describe()} exited during boot ({why})"
            self.abandon_pending(failure)
            self.notifier.reload_failed(self, failure)
            return
        if self.stopping:
            return
        if not self.ever_booted:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == WORKER_EXIT_APP:
                self.halt(AppImportError(f"workers could not import the app {self.settings.app!r}", ), EXIT_APP)
                return
            if self.boot_failures >= MAX_BOOT_FAILURES:
                self.halt(BootError(f"workers failed to boot {self.boot_failures} times in a row "
                                    f"(last: {why}); giving up"), EXIT_BOOT)
                return
        delay = min(BACKOFF_START * 2 ** (self.boot_failures - 1), BACKOFF_MAX)
        self.spawn_not_before = time.monotonic() + delay
        log.error("%s exited during boot (%s); retrying in %.1fs", worker.describe(), why, delay)

    def halt(self, error: Exception, status: int) -> None:
        self.halt_error = error
        log.error("%s", error)
        self.stop_all("fast")

    def stop_worker(self, worker: WorkerProcess, how: str) -> None:
        """Ask a worker to stop: graceful (TERM), fast (QUIT) or kill (SIGKILL)."""
        now = time.monotonic()
        sig = {"graceful": signal.SIGTERM, "fast": signal.SIGQUIT, "kill": signal.SIGKILL}[how]
        grace = {"graceful": self.settings.graceful_timeout, "fast": FAST_STOP_GRACE, "kill": 0.0}[how]
        worker.stopping = how
        deadline = now + grace
        worker.kill_at = deadline if worker.kill_at is None else min(worker.kill_at, deadline)
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass  # already dead; the next reap collects it

    def stop_all(self, how: str) -> None:
        first = not self.stopping
        self.stopping = "fast" if how == "fast" else (self.stopping or "graceful")
        # Another master serving on these same sockets: the one we started (USR2), or the one
        # that started us and that we have not yet told to retire (we are failing to boot).
        shared_with_another = self.new_master is not None or self.replaces is not None
        if first and not shared_with_another:
            # Workers drain what the kernel queued, with non-blocking accepts, then leave;
            # new clients are refused once the last copy of each listener closes.
            self.scoreboard.header.shutting_down = 1
            self.listeners.stop_accepting()
        elif first:
            # Its workers block on these sockets too (and O_NONBLOCK is shared by all):
            # touch nothing, never unlink, just let our workers finish and leave.
            self.listeners.let_go()
            self.listeners.close_ours()
        for worker in self.workers.values():
            if worker.stopping != "kill" and (worker.stopping != how or how == "fast"):
                self.stop_worker(worker, how)
        if first:
            self.notifier.stopping(self)  # after stop_worker: the drain's deadlines are known

    def retire_surplus(self) -> None:
        """After TTOU (or a smaller reload), stop the highest-numbered workers gracefully."""
        for worker in list(self.workers.values()):
            if worker.index >= self.num_workers and not worker.stopping:
                log.info("retiring %s (fewer workers wanted)", worker.describe())
                self.stop_worker(worker, "graceful")

    def retire_replaced(self) -> None:
        """Stop workers marked for replacement once their successor has booted."""
        for worker in list(self.workers.values()):
            if not worker.replace or worker.stopping:
                continue
            if any(w.index == worker.index and w.generation == worker.generation and w.booted
                   and not w.replace and not w.stopping for w in self.workers.values()):
                log.info("replacement for %s booted; retiring it", worker.describe())
                self.stop_worker(worker, "graceful")

    def check_workers(self) -> None:
        """Kill stuck workers and workers that never finish booting; recycle memory hogs."""
        timeout = self.settings.timeout
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.stopping == "kill":
                continue
            slot = self.scoreboard.slots[worker.slot]
            if timeout and slot.state == BUSY and now - slot.busy_since > timeout:
                log.error("%s stuck for %.1fs on connection from %s; dumping its stack and killing it",
                          worker.describe(), now - slot.busy_since, slot.peer_text)
                self.stats.restart(RESTART_TIMEOUT)
                self.abort_worker(worker)
            elif timeout and not worker.booted and now - worker.started > timeout:
                log.error("%s did not boot within %gs; killing it", worker.describe(), timeout)
                self.abort_worker(worker)
        if self.settings.max_worker_memory and now >= self.next_memory_check:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
            self.check_memory()

    def abort_worker(self, worker: WorkerProcess) -> None:
        """SIGABRT first: the worker's faulthandler logs where it is stuck. SIGKILL follows."""
        worker.stopping = "kill"
        worker.kill_at = time.monotonic() + STUCK_KILL_GRACE
        try:
            os.kill(worker.pid, signal.SIGABRT)
        except ProcessLookupError:
            pass

    def check_memory(self) -> None:
        limit = self.settings.max_worker_memory * 1024 * 1024
        for worker in list(self.workers.values()):
            if worker.stopping or worker.replace or not worker.booted:
                continue
            used = worker_memory(worker.pid)
            if used > limit:
                log.warning("%s uses %.1f MB (limit %d MB); recycling it",
                            worker.describe(), used / 2**20, self.settings.max_worker_memory)
                worker.replace = True
                self.stats.restart(RESTART_MEMORY)

    def kill_overdue(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.kill_at is not None and now >= worker.kill_at:
                if worker.stopping == "graceful":
                    log.warning("%s still busy after %gs; killing it",
                                worker.describe(), self.settings.graceful_timeout)
                worker.kill_at = now + 1.0  # retry if SIGKILL is somehow not reaped yet
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def signal_workers(self, sig: int) -> None:
        for worker in self.workers.values():
            try:
                os.kill(worker.pid, sig)
            except ProcessLookupError:
                pass

    def cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.listeners.close_all()
        if self.pidfile is not None:
            self.pidfile.remove()
        for endpoint in self.endpoints:
            endpoint.close()
        self.selector.close()
        for fd in (self.wakeup_r, self.wakeup_w, self.events_r, self.events_w):
            os.close(fd)
        hooks.run("on_exit", self.settings, self)
        log.info("master exiting")


def _record_only(signum: int, frame: Any) -> None:
    """The Python-level handler does nothing: set_wakeup_fd already queued the signal."""


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def worker_memory(pid: int) -> int:
    """Unique set size where the kernel gives it, else RSS; 0 if the process is gone."""
    try:
        process = psutil.Process(pid)
        try:
            return int(process.memory_full_info().uss)
        except psutil.AccessDenied:
            return int(process.memory_info().rss)
    except psutil.NoSuchProcess:
        return 0
