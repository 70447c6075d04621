"""The master's counters for status and metrics, and why it replaced a worker."""

from __future__ import annotations

import time
from collections import Counter

from .record import dataclass, field
from .scoreboard import Slot

# Why the master replaced a worker (the keys of Stats.restarts and of the restarts metric).
RESTART_DIED = "died"  # exited or was killed while it should have been serving
RESTART_TIMEOUT = "timeout"  # stuck on one connection longer than --timeout
RESTART_MAX_REQUESTS = "max_requests"
RESTART_MEMORY = "memory"
# --exec: what the worker counts of its programs (Slot fields; the keys of Stats.retired_programs).
PROGRAM_COUNTS = ("program_failures", "program_timeouts")


@dataclass
class Stats:
    """Counters the master keeps for status and metrics (since it started; never reset)."""

    started: float = field(default_factory=time.time)
    restarts: Counter[str] = field(default_factory=Counter)
    reloads: int = 0  # generations committed
    reload_failures: int = 0  # reloads refused or abandoned
    last_reload_error: str = ""
    boot_failures: int = 0  # workers that exited before booting
    retired_requests: int = 0  # connections served by workers that have since exited
    retired_programs: Counter[str] = field(default_factory=Counter)  # --exec: failures, timeouts of exited workers

    def restart(self, reason: str) -> None:
        self.restarts[reason] += 1

    def reload_failed(self, why: str) -> None:
        self.reload_failures += 1
        self.last_reload_error = why

    def worker_gone(self, slot: Slot) -> None:
        """Keep the connections a reaped worker served, so totals never go down."""
        self.retired_requests += slot.requests
        self.retired_programs.update({name: getattr(slot, name) for name in PROGRAM_COUNTS})
