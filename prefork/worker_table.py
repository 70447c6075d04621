"""The worker table: the master's record of every worker it forked, and what it does to them.

Forking, reaping, stopping (a :class:`~prefork.view.Stop` carries the signal
and the grace before SIGKILL), killing the overdue, and the two checks that
replace a worker without being asked: ``--timeout`` (stuck on a connection, or
never finishing its boot) and ``--max-worker-memory`` (recycled once its
replacement has booted). The master decides *when*; this module knows *how*.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from . import hooks
from .errors import describe_status
from .events import EVENT_BOOTED, EVENT_RETIRE
from .keepalive import keeps_connections
from .record import dataclass
from .scoreboard import BUSY, Scoreboard
from .stats import RESTART_DIED, RESTART_MAX_REQUESTS, RESTART_MEMORY, RESTART_TIMEOUT, Stats
from .threaded import make_nonblocking, run_worker
from .view import Limits, Stop, WorkerProcess
from .worker import WorkerSpec

if TYPE_CHECKING:
    from ssl import SSLContext

    from .boot import BootPolicy
    from .listeners import Listeners
    from .log import AccessLogFile, Log
    from .peer import Handler
    from .settings import Settings
    from .stacks import Stacks

log = logging.getLogger("prefork")

STUCK_KILL_GRACE = 1.0  # seconds between SIGABRT (traceback) and SIGKILL
MEMORY_CHECK_INTERVAL = 5.0


@dataclass(frozen=True)
class ForkWith:
    """What every worker is forked with, whatever its generation: the master's part of each WorkerSpec."""

    listeners: Listeners
    log: Log
    handler: Handler | None  # --preload: the app the master loaded
    server: hooks.Server  # what hooks read
    master_pid: int
    events_fd: int  # the write end of the event pipe
    own_fds: Callable[[], tuple[int, ...]]  # the master's descriptors, closed first thing in the child
    blocked: tuple[int, ...]  # the master's signals, blocked across fork
    stacks: Stacks  # the workers' stack pipes (faulthandler), read by the master


class WorkerTable:
    """pid -> :class:`WorkerProcess` for every worker not yet reaped, with their scoreboard slots."""

    def __init__(self, scoreboard: Scoreboard, stats: Stats) -> None:
        self.scoreboard = scoreboard
        self.stats = stats
        self.workers: dict[int, WorkerProcess] = {}
        self.next_memory_check = 0.0

    # --- fork and reap ---

    def new_record(self, index: int, generation: int) -> WorkerProcess | None:
        """A record (and a scoreboard slot) for a worker about to be forked; None when the scoreboard is full."""
        slot = self.scoreboard.allocate(0, index, generation)
        if slot is None:
            log.error("scoreboard full (%d slots): not starting worker %d", self.scoreboard.capacity, index)
            return None
        return WorkerProcess(0, index, generation, slot, time.monotonic())

    def spawn(self, index: int, generation: int, settings: Settings, tls_context: SSLContext | None,
              access_log: AccessLogFile | None, base: ForkWith) -> None:
        """Fork worker ``index`` of ``generation``; OSError if fork failed."""
        record = self.new_record(index, generation)
        if record is None:
            return
        listeners = base.listeners.for_worker(index, settings)
        slots = self.scoreboard.slots
        in_epoll = settings.threads > 1 or keeps_connections(settings)
        if in_epoll or any(slots[w.slot].threads > 1 or slots[w.slot].in_epoll for w in self.workers.values()):
            make_nonblocking(listeners)  # threads and kept connections wait in epoll, never in a blocking accept()
        slots[record.slot].in_epoll = in_epoll
        hooks.run("pre_fork", settings, base.server, hooks.WorkerInfo.of(record))
        stack_read, stack_write = base.stacks.new_pipe()
        spec = WorkerSpec(
            settings=settings, listeners=tuple(listeners), scoreboard=self.scoreboard, slot_number=record.slot,
            index=index, generation=generation, master_pid=base.master_pid, events_fd=base.events_fd,
            log=base.log, handler=base.handler, server=base.server, tls_context=tls_context, access_log=access_log,
            close_fds=(*base.own_fds(), stack_read), stack_fd=stack_write,
            foreign=tuple(lst for lst in base.listeners.all() if lst not in listeners))
        try:
            self.fork(record, partial(run_worker, spec), base.blocked, freeze=base.handler is not None)
        except OSError:
            os.close(stack_read)
            raise
        finally:
            os.close(stack_write)
        base.stacks.watch(stack_read, record)

    def spawn_missing(self, generation: int, missing: list[int], boot: BootPolicy, settings: Settings,
                      tls_context: SSLContext | None, access_log: AccessLogFile | None, base: ForkWith) -> None:
        """Fork the workers ``missing`` names for ``generation``, unless the boot back-off says wait."""
        if not missing or not boot.may_spawn(time.monotonic()):
            return
        for index in missing:
            try:
                self.spawn(index, generation, settings, tls_context, access_log, base)
            except OSError as exc:
                log.error("fork failed: %s", exc.strerror)
                boot.fork_failed()

    def fork(self, record: WorkerProcess, child: Callable[[], object], blocked: tuple[int, ...],
             freeze: bool) -> None:
        """Fork a worker that runs ``child`` (and never returns); OSError if fork failed (slot released).

        ``blocked``: the master's signals, blocked across fork so that the child never runs
        the master's handlers (nor writes to its wake-up pipe) before installing its own.
        """
        if freeze:
            # --preload: move everything the app allocated out of the collector's reach, so that a
            # collection in a worker does not write to (and so copy) the pages it shares.
            gc.freeze()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.scoreboard.release(record.slot)
            raise
        if pid == 0:
            try:
                child()
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.scoreboard.slots[record.slot].pid = pid
        record.pid, record.started = pid, time.monotonic()
        self.workers[pid] = record
        log.debug("spawned worker %d gen %d (pid %d)", record.index, record.generation, pid)

    def reap(self) -> Iterator[tuple[int, int, WorkerProcess | None]]:
        """Every child that exited: pid, waitpid status and the worker (out of the table, its slot released).

        Workers are the master's only children but --reload's watcher (devreload.py; worker None):
        a binary upgrade's new master is not one (upgrade.py)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                yield pid, status, None
                continue
            self.stats.worker_gone(self.scoreboard.slots[worker.slot])
            worker.exit_status = status
            self.log_exit(worker, status)  # reads the slot: was it serving someone?
            self.scoreboard.release(worker.slot)
            yield pid, status, worker

    def log_exit(self, worker: WorkerProcess, status: int) -> None:
        """Say how a worker left; one that died while serving counts as a restart (a boot failure is the
        caller's: see boot.py)."""
        if worker.stopping is not None:
            log.info("%s exited (%s)", worker.describe(), describe_status(status))
        elif worker.booted:
            why = describe_status(status)
            slot = self.scoreboard.slots[worker.slot]
            if slot.state == BUSY:  # gone in the middle of a connection, without a word (os._exit, a crash)
                why += f" while serving a connection from {slot.peer_text}, in the handler"
            log.warning("%s died (%s); replacing it", worker.describe(), why)
            self.stats.restart(RESTART_DIED)

    def missing(self, generation: int, count: int, kept: frozenset[int] = frozenset()) -> list[int]:
        """Worker indexes of ``generation`` below ``count`` that have no worker (nor one booting), where
        the workers of the generations ``kept`` (a rolling reload stopped half-way) count too."""
        have = {w.index for w in self.workers.values()
                if (w.generation == generation or w.generation in kept) and w.stopping is None and not w.replace}
        return [index for index in range(count) if index not in have]

    def event(self, pid: int, event: int) -> WorkerProcess | None:
        """A worker's message on the event pipe; the worker if it just booted (the master acts on that)."""
        worker = self.workers.get(pid)
        if worker is None:
            return None
        if event == EVENT_BOOTED:
            worker.booted = True
            return worker
        if event == EVENT_RETIRE and not worker.replace:
            worker.replace = True  # --max-requests: retired once its replacement booted
            self.stats.restart(RESTART_MAX_REQUESTS)
        return None

    def indexes(self) -> set[int]:
        return {w.index for w in self.workers.values()}

    # --- stop ---

    def stop(self, worker: WorkerProcess, how: Stop, graceful_timeout: float) -> None:
        """Ask a worker to stop: graceful (TERM), fast (QUIT) or kill (SIGKILL), with its deadline."""
        worker.stopping = how
        deadline = time.monotonic() + how.grace(graceful_timeout)
        worker.kill_at = deadline if worker.kill_at is None else min(worker.kill_at, deadline)
        try:
            os.kill(worker.pid, how.signal)
        except ProcessLookupError:
            pass  # already dead; the next reap collects it

    def stop_all(self, how: Stop, graceful_timeout: float) -> None:
        """Every worker (a fast stop overtakes a graceful one; a kill is never softened)."""
        for worker in self.workers.values():
            if worker.stopping is not Stop.KILL and (worker.stopping is not how or how is Stop.FAST):
                self.stop(worker, how, graceful_timeout)

    def stop_generation(self, generation: int, graceful_timeout: float) -> None:
        for worker in list(self.workers.values()):
            if worker.generation == generation and worker.stopping is None:
                self.stop(worker, Stop.GRACEFUL, graceful_timeout)

    def retire_other_generations(self, generation: int, graceful_timeout: float) -> int:
        """Gracefully stop every worker not of ``generation``; how many were asked."""
        retiring = [w for w in self.workers.values() if w.generation != generation and w.stopping is None]
        for worker in retiring:
            self.stop(worker, Stop.GRACEFUL, graceful_timeout)
        return len(retiring)

    def retire_rolled(self, generation: int, graceful_timeout: float) -> None:
        """Rolling reload: stop each worker whose index has a booted worker of ``generation`` now."""
        booted = {w.index for w in self.workers.values()
                  if w.generation == generation and w.booted and w.stopping is None}
        for worker in list(self.workers.values()):
            if worker.generation != generation and worker.index in booted and worker.stopping is None:
                log.info("rolling reload: %s replaced; retiring it", worker.describe())
                self.stop(worker, Stop.GRACEFUL, graceful_timeout)

    def stop_booting(self, generation: int, graceful_timeout: float) -> None:
        """Stop the workers of ``generation`` that have not booted (a rolling reload keeps the booted)."""
        for worker in list(self.workers.values()):
            if worker.generation == generation and not worker.booted and worker.stopping is None:
                self.stop(worker, Stop.GRACEFUL, graceful_timeout)

    def retire_surplus(self, count: int, graceful_timeout: float) -> None:
        """After TTOU (or a smaller reload), stop the workers numbered ``count`` and above, gracefully."""
        for worker in list(self.workers.values()):
            if worker.index >= count and worker.stopping is None:
                log.info("retiring %s (fewer workers wanted)", worker.describe())
                self.stop(worker, Stop.GRACEFUL, graceful_timeout)

    def retire_replaced(self, graceful_timeout: float, kept: frozenset[int] = frozenset()) -> None:
        """Stop workers marked for replacement once their successor has booted (of their generation; for a
        worker kept from a stopped rolling reload, of whichever generation replaced it)."""
        for worker in list(self.workers.values()):
            if not worker.replace or worker.stopping is not None:
                continue
            if any(w.index == worker.index and (w.generation == worker.generation or worker.generation in kept)
                   and w.booted and not w.replace and w.stopping is None for w in self.workers.values()):
                log.info("replacement for %s booted; retiring it", worker.describe())
                self.stop(worker, Stop.GRACEFUL, graceful_timeout)

    def kill_overdue(self, graceful_timeout: float) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.kill_at is not None and now >= worker.kill_at:
                if worker.stopping is Stop.GRACEFUL:
                    log.warning("%s still busy after %gs; killing it", worker.describe(), graceful_timeout)
                worker.kill_at = now + 1.0  # retry if SIGKILL is somehow not reaped yet
                self.kill_program_group(worker)
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def kill_program_group(self, worker: WorkerProcess) -> None:
        """--exec: end the program's whole group before its worker is killed. Its parent-death signal
        reaches the program alone; its children would outlive the server. While the worker lives it has
        not reaped the program, so the group's number cannot have passed to another process."""
        group = self.scoreboard.slots[worker.slot].program_group
        if group > 0:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def signal_all(self, sig: int) -> None:
        for worker in self.workers.values():
            try:
                os.kill(worker.pid, sig)
            except ProcessLookupError:
                pass

    # --- --timeout and --max-worker-memory ---

    def check(self, limits: Limits) -> None:
        """Kill stuck workers and workers that never finish booting (--boot-timeout); recycle memory hogs."""
        timeout, boot_timeout, memory_limit_mb = limits.timeout, limits.boot_timeout, limits.memory_mb
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.stopping is Stop.KILL:
                continue
            slot = self.scoreboard.slots[worker.slot]
            if timeout and slot.state == BUSY and now - slot.busy_since > timeout:
                log.error("%s stuck for %.1fs on connection from %s; dumping its stack and killing it",
                          worker.describe(), now - slot.busy_since, slot.peer_text)
                self.stats.restart(RESTART_TIMEOUT)
                self.abort(worker)
            elif boot_timeout and not worker.booted and now - worker.started > boot_timeout:
                log.error("%s did not boot within %gs (--boot-timeout); dumping its stack and killing it",
                          worker.describe(), boot_timeout)
                self.abort(worker)
        if memory_limit_mb and now >= self.next_memory_check:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
            self.check_memory(memory_limit_mb)

    def abort(self, worker: WorkerProcess) -> None:
        """SIGABRT first: the worker's faulthandler logs where it is stuck. SIGKILL follows."""
        worker.stopping = Stop.KILL
        worker.kill_at = time.monotonic() + STUCK_KILL_GRACE
        try:
            os.kill(worker.pid, signal.SIGABRT)
        except ProcessLookupError:
            pass

    def check_memory(self, limit_mb: int) -> None:
        limit = limit_mb * 1024 * 1024
        for worker in list(self.workers.values()):
            if worker.stopping is not None or worker.replace or not worker.booted:
                continue
            used = worker_memory(worker.pid)
            if used > limit:
                log.warning("%s uses %.1f MB (limit %d MB); recycling it", worker.describe(), used / 2**20, limit_mb)
                worker.replace = True
                self.stats.restart(RESTART_MEMORY)

    # --- deadlines for the master's selector ---

    def deadlines(self, now: float, limits: Limits) -> list[float]:
        """When the table next needs the master awake: kill deadlines, --timeout, --boot-timeout, memory."""
        timeout, boot_timeout, memory_limit_mb = limits.timeout, limits.boot_timeout, limits.memory_mb
        deadlines = [w.kill_at for w in self.workers.values() if w.kill_at is not None]
        if self.workers and timeout:
            deadlines.append(self.next_stuck_check(now, timeout))
        booting = [w.started + boot_timeout for w in self.workers.values()
                   if not w.booted and w.stopping is not Stop.KILL]
        if booting and boot_timeout:
            deadlines.append(min(booting) + 0.01)
        if self.workers and memory_limit_mb:
            deadlines.append(self.next_memory_check)
        return deadlines

    def next_stuck_check(self, now: float, timeout: float) -> float:
        """When a worker could next have overrun --timeout.

        A busy worker overruns at busy_since + timeout; one that is idle now cannot
        overrun before now + timeout. So an idle server wakes once per --timeout
        instead of every second, and a stuck worker is still caught on time.
        """
        deadline = now + timeout
        for worker in self.workers.values():
            slot = self.scoreboard.slots[worker.slot]
            if worker.stopping is Stop.KILL:
                continue
            if worker.booted and slot.state == BUSY:
                deadline = min(deadline, slot.busy_since + timeout)
        return deadline + 0.01  # just past it, so the check sees the overrun


def worker_memory(pid: int) -> int:
    """Unique set size where the kernel gives it, else RSS; 0 if the process is gone."""
    import psutil  # only with --max-worker-memory: the master does not load it otherwise

    try:
        process = psutil.Process(pid)
        try:
            return int(process.memory_full_info().uss)
        except psutil.AccessDenied:
            return int(process.memory_info().rss)
    except psutil.NoSuchProcess:
        return 0

