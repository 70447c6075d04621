"""What the master's helpers may read of it: a read-only view, its records, and the facts derived from them.

status, metrics, systemd, pool, control and threaded never see the ``Master``:
they take a :class:`ServerView` (the master's is a ``master_view.MasterView``)
and return what they decide. Each fact derived from the view has one home here, so that
"connections served" or "every worker of generation G booted" means the same
thing in ``prefork status``, the metrics and systemd's STATUS line.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from .record import dataclass
from .scoreboard import BUSY, Scoreboard, Slot
from .stats import PROGRAM_COUNTS, Stats

if TYPE_CHECKING:
    from .settings import Settings

FAST_STOP_GRACE = 0.5  # seconds between QUIT and SIGKILL


class Stop(Enum):
    """How a worker (or the whole server) is being stopped: the signal sent, and how long it may take."""

    GRACEFUL = ("graceful", signal.SIGTERM, None)  # None: the settings' --graceful-timeout
    FAST = ("fast", signal.SIGQUIT, FAST_STOP_GRACE)
    KILL = ("kill", signal.SIGKILL, 0.0)

    def __init__(self, label: str, sig: signal.Signals, grace: float | None) -> None:
        self.label = label
        self.signal = sig
        self.fixed_grace = grace

    def grace(self, graceful_timeout: float) -> float:
        """Seconds between the signal and SIGKILL."""
        return graceful_timeout if self.fixed_grace is None else self.fixed_grace


class StopState:
    """Whether the server stops, and how: the master's own state, which its view (and the upgrade) read."""

    def __init__(self) -> None:
        self.how: Stop | None = None  # GRACEFUL or FAST once the server stops

    def escalate(self, how: Stop) -> bool:
        """Stop ``how``: FAST makes any stop fast, never the other way round. True for the first stop."""
        first = self.how is None
        self.how = Stop.FAST if how is Stop.FAST else (self.how or Stop.GRACEFUL)
        return first


class Phase(Enum):
    """Where the server is in its life, as status, metrics, systemd and a readiness check read it."""

    SERVING = "serving"
    SHUTDOWN_DELAY = "shutdown delay"  # TERM came: still serving normally for --shutdown-delay
    DRAINING = "draining"  # graceful stop: no new connections, serving what was in flight or queued
    STOPPING_FAST = "stopping fast"

    def __init__(self, label: str) -> None:
        self.label = label


@dataclass
class WorkerProcess:
    """The master's record of one worker it forked."""

    pid: int
    index: int
    generation: int
    slot: int
    started: float  # time.monotonic()
    booted: bool = False
    stopping: Stop | None = None
    kill_at: float | None = None
    replace: bool = False  # retire once a replacement for this index has booted
    exit_status: int | None = None  # the raw waitpid() status once reaped (for the worker_exit hook)

    def describe(self) -> str:
        return f"worker {self.index} gen {self.generation} (pid {self.pid})"


class ServerView(Protocol):
    """The master as its helpers read it. Read-only: a helper returns its decision instead of writing."""

    @property
    def pid(self) -> int: ...
    @property
    def settings(self) -> Settings: ...  # the serving generation's
    @property
    def generation(self) -> int: ...  # the serving generation
    @property
    def pending(self) -> int | None: ...  # the generation on trial during a reload
    @property
    def pending_settings(self) -> Settings | None: ...
    @property
    def num_workers(self) -> int: ...  # the target worker count
    @property
    def workers(self) -> Mapping[int, WorkerProcess]: ...  # pid -> record
    @property
    def scoreboard(self) -> Scoreboard: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def stopping(self) -> Stop | None: ...
    @property
    def shutdown_delay_ends(self) -> float | None: ...  # time.monotonic() when a TERM's delay ends
    @property
    def new_master(self) -> int | None: ...  # the pid of the master a USR2 upgrade started (not our child)
    @property
    def replaces(self) -> int | None: ...  # the pid of the master we were started to replace
    @property
    def listener_names(self) -> Sequence[str]: ...
    @property
    def stack_report(self) -> dict[str, object]: ...  # the workers' latest stacks (stacks.py), for `prefork dump`


# --- the derived facts, one home each ---


def phase(view: ServerView) -> Phase:
    """Serving, in the shutdown delay, draining or stopping fast: the one answer for every reader."""
    if view.stopping is not None:
        return Phase.DRAINING if view.stopping is Stop.GRACEFUL else Phase.STOPPING_FAST
    return Phase.SERVING if view.shutdown_delay_ends is None else Phase.SHUTDOWN_DELAY


def busy_threads(slot: Slot) -> int:
    """Threads of one worker serving a connection (a single-threaded worker: 0 or 1)."""
    return int(slot.busy_threads) if slot.threads else int(slot.state == BUSY)


def connections_served(view: ServerView) -> int:
    """Connections served since the master started, by live workers and by those since reaped."""
    slots = view.scoreboard.slots
    return view.stats.retired_requests + sum(int(slots[w.slot].requests) for w in view.workers.values())


def programs_counted(view: ServerView) -> dict[str, int]:
    """--exec: programs that failed, and that were killed for --timeout, by live workers and reaped ones."""
    slots = [view.scoreboard.slots[w.slot] for w in view.workers.values()]
    return {name: view.stats.retired_programs[name] + sum(int(getattr(slot, name)) for slot in slots)
            for name in PROGRAM_COUNTS}


def serving(worker: WorkerProcess, generation: int) -> bool:
    """Booted, of ``generation``, and not stopping."""
    return worker.generation == generation and worker.booted and worker.stopping is None


def generation_booted(view: ServerView, generation: int) -> bool:
    """Whether every worker index of ``generation`` has a booted worker that is not stopping."""
    booted = {w.index for w in view.workers.values() if serving(w, generation)}
    return all(index in booted for index in range(view.num_workers))


def settings_for(view: ServerView, generation: int) -> Settings:
    """The settings in force for ``generation``: the trial generation's during a reload, else the serving ones."""
    if generation == view.pending and view.pending_settings is not None:
        return view.pending_settings
    return view.settings


def newest_settings(view: ServerView) -> Settings:
    """The settings of the generation being worked towards (the one on trial, if any)."""
    return view.pending_settings or view.settings


@dataclass(frozen=True)
class Limits:
    """What the worker table enforces on every worker (0: not enforced); nothing while the server stops."""

    timeout: float  # --timeout: busy on one connection for longer
    boot_timeout: float  # --boot-timeout: still booting after
    memory_mb: int  # --max-worker-memory


def worker_limits(view: ServerView) -> Limits:
    """The serving settings' --timeout and memory limit; --boot-timeout from the generation being worked
    towards (its workers are the ones booting). None once the server stops: its workers have their stop's
    deadlines (and the master no deadline left behind in the past, to wake for at once, forever)."""
    if view.stopping is not None:
        return Limits(0.0, 0.0, 0)
    settings = view.settings
    return Limits(settings.worker_timeout, newest_settings(view).boot_timeout, settings.max_worker_memory)

