"""Prometheus text exposition (format 0.0.4), served by the master from its own loop.

Everything comes from the master's snapshot (its tables and the scoreboard)
plus each worker's resident memory read from /proc; nothing is imported into
the workers or touched on their hot path. The HTTP side is the least that a
scraper needs: one GET, one answer, close.
"""

from __future__ import annotations

import os
from typing import Any

from . import health, status
from .stats import RESTART_DIED, RESTART_MAX_REQUESTS, RESTART_MEMORY, RESTART_TIMEOUT
from .view import Phase, ServerView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
HEALTH_PATHS = ("/livez", "/readyz")
WORKER_STATES = ("booting", "idle", "busy", "stopping")
RESTART_REASONS = (RESTART_DIED, RESTART_TIMEOUT, RESTART_MAX_REQUESTS, RESTART_MEMORY)


def answer_http(master: ServerView, request: bytes) -> bytes:
    """The whole HTTP/1.0-style answer to one request (the connection closes after it)."""
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return response("400 Bad Request", "bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return response("405 Method Not Allowed", "only GET\n", extra="Allow: GET, HEAD\r\n")
    if target in HEALTH_PATHS:
        return response(*health.answer(master, target), head=method == "HEAD")
    if target not in ("/metrics", "/"):
        return response("404 Not Found", "metrics are at /metrics (health at /livez, /readyz)\n")
    return response("200 OK", exposition(master), content_type=CONTENT_TYPE, head=method == "HEAD")


def response(status_line: str, body: str, *, content_type: str = "text/plain; charset=utf-8",
             extra: str = "", head: bool = False) -> bytes:
    payload = body.encode()
    headers = (f"HTTP/1.1 {status_line}\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n{extra}\r\n")
    return headers.encode() + (b"" if head else payload)


def exposition(master: ServerView) -> str:
    """Every metric, as Prometheus text."""
    report = status.snapshot(master)
    m, stats, workers = report["master"], report["stats"], report["workers"]
    out = Exposition()
    out.metric("prefork_connections_total", "counter", "Connections served by all workers since the master started.",
               [({}, stats["connections"])])
    by_state = {state: sum(1 for w in workers if w["state"] == state) for state in WORKER_STATES}
    out.metric("prefork_workers", "gauge", "Worker processes by state.",
               [({"state": state}, count) for state, count in by_state.items()])
    out.metric("prefork_workers_target", "gauge", "Worker processes the master keeps.", [({}, m["target_workers"])])
    out.metric("prefork_threads_busy", "gauge", "Threads serving a connection, over all workers.",
               [({}, sum(w["busy_threads"] for w in workers))])
    out.metric("prefork_threads", "gauge", "Accepting threads, over all booted workers still serving.",
               [({}, sum(w["threads"] for w in workers if w["state"] in ("idle", "busy")))])
    restarts = stats["restarts"]
    out.metric("prefork_worker_restarts_total", "counter", "Workers replaced, by reason.",
               [({"reason": reason}, restarts.get(reason, 0)) for reason in RESTART_REASONS])
    out.metric("prefork_reloads_total", "counter", "Reloads completed (a new generation serving).",
               [({}, stats["reloads"])])
    out.metric("prefork_reload_failures_total", "counter", "Reloads refused or abandoned.",
               [({}, stats["reload_failures"])])
    out.metric("prefork_boot_failures_total", "counter", "Workers that exited before booting.",
               [({}, stats["boot_failures"])])
    out.metric("prefork_program_failures_total", "counter", "--exec: programs that exited non-zero or were killed.",
               [({}, stats["program_failures"])])
    out.metric("prefork_program_timeouts_total", "counter", "--exec: programs killed for running past --timeout.",
               [({}, stats["program_timeouts"])])
    out.metric("prefork_generation", "gauge", "The generation of workers serving.", [({}, m["generation"])])
    out.metric("prefork_phase", "gauge", "1 for the phase the server is in: serving, shutdown delay, draining, "
               "stopping fast.", [({"phase": p.label}, int(p.label == m["phase"])) for p in Phase])
    out.metric("prefork_master_start_time_seconds", "gauge", "When the master started, in Unix time.",
               [({}, m["started"])])
    out.metric("prefork_worker_resident_memory_bytes", "gauge", "Resident memory of each worker process.",
               [({"index": w["index"], "pid": w["pid"], "generation": w["generation"]}, rss)
                for w in workers if (rss := resident_memory(w["pid"])) is not None])
    return out.text()


def resident_memory(pid: int) -> int | None:
    """RSS from /proc/PID/statm: one small read, never waits on the process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE_SIZE
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):  # not Linux: psutil knows the platform's way
        import psutil  # here: the master does not load it otherwise

        try:
            return int(psutil.Process(pid).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


class Exposition:
    """Accumulates metric families in the text format."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{key}="{escape(str(val))}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
