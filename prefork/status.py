"""What the master reports about itself: its snapshot, for the control socket and the metrics.

The master builds :func:`snapshot` (a JSON-ready dict, schema in ``protocol.py``)
from its own tables and the scoreboard when asked; it never measures CPU or
memory for it. The ``prefork status`` client adds those (``status_table.py``).
"""

from __future__ import annotations

import time
from typing import Any

from .scoreboard import BUSY, STATE_NAMES, Slot
from .settings import Settings
from .view import ServerView, WorkerProcess, busy_threads, connections_served, phase, programs_counted


def snapshot(master: ServerView) -> dict[str, Any]:
    """The server as the master sees it now, for the control socket and metrics."""
    settings = master.settings
    now = time.monotonic()
    workers = sorted(master.workers.values(), key=lambda w: (w.generation, w.index, w.pid))
    reports = [worker_report(w, master.scoreboard.slots[w.slot], now) for w in workers]
    return {
        "master": {
            "pid": master.pid,
            "name": settings.proc_name,
            "app": settings.app,
            "generation": master.generation,
            "pending_generation": master.pending,
            "started": master.stats.started,
            "listeners": list(master.listener_names),
            "target_workers": master.num_workers,
            "threads": settings.threads,
            "stopping": master.stopping.label if master.stopping else None,
            "phase": phase(master).label,
            "shutdown_delay": settings.shutdown_delay,
            "graceful_timeout": settings.graceful_timeout,
            "pool": pool_report(settings),
        },
        "stats": {
            "connections": connections_served(master),
            "restarts": dict(master.stats.restarts),
            "reloads": master.stats.reloads,
            "reload_failures": master.stats.reload_failures,
            "last_reload_error": master.stats.last_reload_error or None,
            "boot_failures": master.stats.boot_failures,
            **programs_counted(master),
        },
        "workers": reports,
    }


def pool_report(settings: Settings) -> dict[str, Any] | None:
    """The adaptive pool's bounds, or None for a fixed number of workers."""
    if not settings.max_workers:
        return None
    return {"min_workers": settings.min_workers, "max_workers": max(settings.min_workers, settings.max_workers),
            "spare": settings.spare, "idle_retire": settings.idle_retire}


def worker_report(worker: WorkerProcess, slot: Slot, now: float) -> dict[str, Any]:
    threads = max(1, slot.threads)
    busy_count = busy_threads(slot)
    busy = slot.state == BUSY or busy_count > 0
    state = STATE_NAMES.get(slot.state, "unknown")
    if worker.stopping:
        state = "stopping"
    elif not worker.booted:
        state = "booting"
    elif busy:
        state = "busy"
    return {
        "pid": worker.pid,
        "index": worker.index,
        "generation": worker.generation,
        "state": state,
        "booted": worker.booted,
        "requests": slot.requests,
        "program_failures": slot.program_failures,
        "program_timeouts": slot.program_timeouts,
        "started": slot.started,
        "busy_for": max(0.0, now - slot.busy_since) if busy else None,
        "peer": slot.peer_text if busy else None,
        "threads": threads,
        "busy_threads": busy_count,
    }
