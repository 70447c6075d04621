"""The boot policy: how long to wait before forking again after a worker failed to boot, and when to give up.

Workers that exit before they booted are retried with an exponential back-off
(0.1 s doubling up to 5 s). Before any worker ever booted the server gives up:
at once when a worker could not load the app or program (exit status EXIT_APP), after
MAX_BOOT_FAILURES in a row otherwise (EXIT_BOOT). Once one has booted, the
server never gives up: it keeps serving with what it has and retries.
"""

from __future__ import annotations

import logging
import os
import time

from .errors import WORKER_EXIT_APP, AppImportError, BootError, PreforkError, describe_status
from .stats import Stats
from .view import ServerView, WorkerProcess

log = logging.getLogger("prefork")

MAX_BOOT_FAILURES = 5  # in a row, before any worker ever booted: give up with EXIT_BOOT
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
FORK_RETRY = 1.0  # seconds to wait after fork() itself failed


class BootPolicy:
    """Boot failures in a row, and the earliest moment the master may fork again."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats  # boot_failures: every one, for status and metrics
        self.ever_booted = False
        self.failures = 0
        self.spawn_not_before = 0.0

    def may_spawn(self, now: float) -> bool:
        return now >= self.spawn_not_before

    def deadline(self, now: float) -> float | None:
        """When the back-off ends, if it has not yet (for the master's selector)."""
        return self.spawn_not_before if self.spawn_not_before > now else None

    def booted(self, worker: WorkerProcess) -> None:
        log.info("%s booted", worker.describe())
        self.ever_booted = True
        self.failures = 0

    def reset(self) -> None:
        """A reload starts afresh: its generation gets the whole back-off again."""
        self.failures = 0
        self.spawn_not_before = 0.0

    def fork_failed(self) -> None:
        self.spawn_not_before = time.monotonic() + FORK_RETRY

    def count_failure(self) -> None:
        """A worker exited before it booted (whatever the master does about it)."""
        self.failures += 1
        self.stats.boot_failures += 1

    def failed(self, worker: WorkerProcess, status: int, view: ServerView) -> str | PreforkError | None:
        """A worker exited before it booted. A str: why the reload of its generation (the one on trial) fails;
        an error: the server halts with it; None: the next fork waits a while (or, once stopping, never comes)."""
        self.count_failure()
        if worker.generation == view.pending:
            return f"{worker.describe()} exited during boot ({describe_status(status)})"
        return None if view.stopping is not None else self.decide(worker, status, view.settings.served)

    def decide(self, worker: WorkerProcess, status: int, served: str) -> PreforkError | None:
        """After :meth:`count_failure`: the error to halt with, or None (the next fork waits a while).

        ``served`` names what the workers load (``Settings.served``: the app, or the --exec program).
        """
        why = describe_status(status)
        if not self.ever_booted:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == WORKER_EXIT_APP:
                return AppImportError(f"workers could not load {served}")
            if self.failures >= MAX_BOOT_FAILURES:
                return BootError(f"workers failed to boot {self.failures} times in a row (last: {why}); giving up")
        delay: float = min(BACKOFF_START * 2.0 ** (self.failures - 1), BACKOFF_MAX)
        self.spawn_not_before = time.monotonic() + delay
        log.error("%s exited during boot (%s); retrying in %.1fs", worker.describe(), why, delay)
        return None
