"""How many workers the master keeps: the one place its target count is changed.

``--workers`` sets it at start; TTIN and TTOU move it by one (never below
one); a reload sets it to the new settings' ``--workers``, and a reload given up
back to the serving ones'. With ``--max-workers`` the adaptive pool decides it
(:meth:`Pool.adjust <prefork.pool.Pool.adjust>` returns a size, :meth:`WorkerCount.follow`
takes it), so TTIN/TTOU last only until the pool's next look. The worker table then
spawns or retires to match (``WorkerTable.spawn_missing``, ``retire_surplus``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("prefork")


class WorkerCount:
    """The master's target worker count (``view.ServerView.num_workers``, ``target_workers`` in status)."""

    def __init__(self, workers: int) -> None:
        self.target = workers

    def more(self) -> None:
        """TTIN: one worker more."""
        self.target += 1
        log.info("TTIN: %d workers", self.target)

    def fewer(self) -> None:
        """TTOU: one worker fewer, keeping one."""
        self.target = max(1, self.target - 1)
        log.info("TTOU: %d workers", self.target)

    def follow(self, pool_size: int | None) -> None:
        """The adaptive pool's decision; None (the pool is off, or the server stopping) changes nothing."""
        if pool_size is not None:
            self.target = pool_size

    def reset(self, settings: Settings) -> None:
        """A reload's new settings, or the serving ones once a reload is given up: their --workers."""
        self.target = settings.workers
