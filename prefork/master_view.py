"""What others get of the master instead of the master: its view, and its descriptors.

The master builds one :class:`MasterView` (a :class:`view.ServerView <prefork.view.ServerView>`)
from the parts that own each fact (the generations, the worker table, the worker count,
the upgrade, the listeners, the stacks, the shutdown delay, the stop state) and hands it,
never itself, to status, metrics, systemd, the pool, control, health, reload, upgrade and
the hooks' facade: a helper can read these facts and nothing else of the master, and can
write none of them. The worker table gets :class:`MasterFds`, the descriptors every
worker closes first thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .record import dataclass

if TYPE_CHECKING:
    from .control import Endpoints
    from .listeners import Listeners
    from .pidfile import Pidfile
    from .reload import Generations
    from .scoreboard import Scoreboard
    from .settings import Settings
    from .shutdown_delay import ShutdownDelay
    from .stacks import Stacks
    from .stats import Stats
    from .upgrade import Upgrade
    from .view import Stop, StopState, WorkerProcess
    from .worker_count import WorkerCount
    from .worker_table import WorkerTable


@dataclass(frozen=True)
class MasterView:
    """view.ServerView, each fact read from its owner when asked: always current, never written."""

    pid: int
    gens: Generations  # the serving generation and its settings, the one on trial
    count: WorkerCount  # the target worker count
    table: WorkerTable  # the worker records, the scoreboard, the counters
    stop: StopState  # the master's: whether (and how) it stops
    delay: ShutdownDelay  # when a TERM's --shutdown-delay ends
    upgrade: Upgrade  # the successor a USR2 started, or the master we replace
    listeners: Listeners
    stacks: Stacks  # the workers' latest stacks

    @property
    def settings(self) -> Settings:
        return self.gens.settings

    @property
    def generation(self) -> int:
        return self.gens.generation

    @property
    def pending(self) -> int | None:
        return self.gens.pending

    @property
    def pending_settings(self) -> Settings | None:
        return self.gens.pending_settings

    @property
    def num_workers(self) -> int:
        return self.count.target

    @property
    def workers(self) -> Mapping[int, WorkerProcess]:
        return self.table.workers

    @property
    def scoreboard(self) -> Scoreboard:
        return self.table.scoreboard

    @property
    def stats(self) -> Stats:
        return self.table.stats

    @property
    def stopping(self) -> Stop | None:
        return self.stop.how

    @property
    def shutdown_delay_ends(self) -> float | None:
        return self.delay.ends

    @property
    def new_master(self) -> int | None:
        return self.upgrade.new_master_pid

    @property
    def replaces(self) -> int | None:
        return self.upgrade.replaces_pid

    @property
    def listener_names(self) -> Sequence[str]:
        return [listener.name for listener in self.listeners.shared]

    @property
    def stack_report(self) -> dict[str, object]:
        return self.stacks.answer()


class MasterFds:
    """The master's own descriptors, which a worker closes first thing: its pipes and selector (``fixed``), the
    control and metrics sockets, the stack pipes, and the pid file (a worker must neither write it nor keep its
    lock)."""

    def __init__(self, fixed: tuple[int, ...], endpoints: Endpoints, stacks: Stacks) -> None:
        self.fixed, self.endpoints, self.stacks = fixed, endpoints, stacks
        self.pidfile: Pidfile | None = None  # the master's, once it claimed one at start

    def now(self) -> tuple[int, ...]:
        """Those open now (the control socket may have been bound again, stack pipes come and go)."""
        pidfile_fds = self.pidfile.fds() if self.pidfile else []
        return (*self.fixed, *self.endpoints.fds(), *pidfile_fds, *self.stacks.fds())
