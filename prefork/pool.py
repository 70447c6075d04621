"""The adaptive pool (``--min-workers A --max-workers B``): Apache prefork's spare-server idea.

Once a second the master reads the scoreboard and sets its target worker
count (:meth:`Pool.adjust` returns it); spawning and retiring then happen exactly as
after TTIN/TTOU. Idle capacity is counted in threads (a worker with
``--threads N`` that serves two connections has N - 2 idle), and workers still
booting count as capacity on its way, so a slow boot does not make the pool
overshoot.

* Short of ``--spare`` idle workers: add workers, up to B, one in the first
  second, then twice as many each further second the shortage lasts (Apache's
  1, 2, 4, 8...), so a burst is met quickly without forking a herd for a blip.
* At least one whole worker more idle than ``--spare`` for ``--idle-retire``
  seconds: retire one worker a second (gracefully) while the surplus lasts,
  down to A.

No worker is asked anything: the decision reads only the shared slots.
"""

from __future__ import annotations

import logging

from .settings import Settings
from .view import ServerView, busy_threads, newest_settings

log = logging.getLogger("prefork")

CHECK_INTERVAL = 1.0  # seconds between two looks at the scoreboard
MAX_SPAWN_RATE = 32  # workers added in one second, at most


class Pool:
    """The pool's size and how it is changing: spawn rate, since when idle capacity is surplus.

    The pool owns the worker count while it is on: TTIN/TTOU are undone at the
    next wake-up, and a reload boots the new generation at the pool's current
    size (bounded by the new settings), so capacity does not dip across it.
    """

    def __init__(self) -> None:
        self.size: int | None = None  # None until the pool first runs
        self.next_check = 0.0
        self.rate = 1
        self.surplus_since: float | None = None

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return settings.max_workers > 0

    def deadline(self, settings: Settings) -> float | None:
        """When the master should wake for the next look (None: the pool is off)."""
        return self.next_check if self.enabled(settings) else None

    def adjust(self, master: ServerView, now: float) -> int | None:
        """The worker count the master should keep: the pool's size, resized from the scoreboard once per
        CHECK_INTERVAL. None when the pool is off (or the server stopping): the count is not the pool's."""
        settings = newest_settings(master)
        if not self.enabled(settings) or master.stopping:
            return None
        low, high = bounds(settings)
        if self.size is None:
            log.info("adaptive pool: %d to %d workers, %d spare", low, high, settings.spare)
            self.size = low
        self.size = min(max(self.size, low), high)
        # During a reload the new generation boots at this size; resizing resumes once it serves.
        if master.pending is None and now >= self.next_check:
            self.next_check = now + CHECK_INTERVAL
            self.size = self.resize(master, self.size, low, high, now)
        return self.size

    def resize(self, master: ServerView, target: int, low: int, high: int, now: float) -> int:
        settings = master.settings
        idle, coming, live = idle_capacity(master)
        coming += max(0, target - live) * settings.threads  # wanted, not forked yet
        wanted_idle = settings.spare * settings.threads
        if idle + coming < wanted_idle and target < high:
            added = min(self.rate, high - target)
            log.info("pool: %d idle of %d wanted; %d -> %d workers", idle, wanted_idle, target, target + added)
            self.rate = min(self.rate * 2, MAX_SPAWN_RATE)
            self.surplus_since = None
            return target + added
        self.rate = 1
        if idle - wanted_idle < settings.threads or target <= low or coming:
            self.surplus_since = None
            return target
        if self.surplus_since is None:
            self.surplus_since = now
        if now - self.surplus_since < settings.idle_retire:
            return target
        log.info("pool: %d idle of %d wanted for %gs; %d -> %d workers",
                 idle, wanted_idle, settings.idle_retire, target, target - 1)
        return target - 1


def bounds(settings: Settings) -> tuple[int, int]:
    """The pool's (min, max) workers; a max below the min means the min."""
    return settings.min_workers, max(settings.min_workers, settings.max_workers)


def idle_capacity(master: ServerView) -> tuple[int, int, int]:
    """In the serving generation: (idle threads of booted workers, threads still booting, workers)."""
    idle = coming = live = 0
    for worker in master.workers.values():
        if worker.stopping or worker.replace or worker.generation != master.generation:
            continue
        live += 1
        if not worker.booted:
            coming += master.settings.threads
            continue
        slot = master.scoreboard.slots[worker.slot]
        threads = max(1, slot.threads)
        idle += threads - busy_threads(slot)
    return idle, coming, live
