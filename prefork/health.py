"""Health endpoints beside ``/metrics``: ``/livez`` and ``/readyz``, for Kubernetes probes and HAProxy checks.

``/livez`` is answered by the master's own loop, so an answer is the proof that
the loop runs. ``/readyz`` is 200 while the server can take its share of
traffic: the workers it should have are booted (of whichever generation, so a
reload does not flap it) and it is serving (``view.phase``: not in a TERM's
shutdown delay, draining or stopping fast); otherwise 503 and one line saying
why. Every fact is read from the view.
"""

from __future__ import annotations

from .view import Phase, ServerView, phase


def ready_target(view: ServerView) -> int:
    """How many booted workers make the server ready: the target count, or an adaptive pool's minimum
    (its growth under load must not make it look unready)."""
    settings = view.settings
    return min(view.num_workers, settings.min_workers) if settings.max_workers else view.num_workers


def booted_workers(view: ServerView) -> int:
    """Booted workers that are not stopping, of any generation."""
    return sum(1 for w in view.workers.values() if w.booted and w.stopping is None)


def unready_reason(view: ServerView) -> str | None:
    """Why the server is not ready, in one line; None when it is."""
    now = phase(view)
    if now is not Phase.SERVING:
        return now.label  # the shutdown delay too: a load balancer stops sending meanwhile
    booted, target = booted_workers(view), ready_target(view)
    if booted < target:
        return f"booting: {booted} of {target} workers booted"
    return None


def answer(view: ServerView, path: str) -> tuple[str, str]:
    """(status line, body) for ``/livez`` or ``/readyz``."""
    if path == "/livez":
        return "200 OK", "ok\n"
    reason = unready_reason(view)
    if reason is None:
        return "200 OK", f"ready: {booted_workers(view)} of {ready_target(view)} workers booted\n"
    return "503 Service Unavailable", reason + "\n"
