"""The ``prefork status`` client's side: CPU and memory from psutil, then the table a person reads."""

from __future__ import annotations

import time
from typing import Any

import psutil


class Sampler:
    """CPU % between two looks at each process (as top does), and its memory."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[float, float]] = {}  # pid -> (monotonic, CPU seconds)

    def measure(self, report: dict[str, Any]) -> None:
        """Add ``cpu_percent``, ``rss`` and ``uss`` to the master and each worker (None if unknown)."""
        now = time.monotonic()
        seen: dict[int, tuple[float, float]] = {}
        for entry in [report["master"], *report["workers"]]:
            entry.update(cpu_percent=None, rss=None, uss=None)
            try:
                process = psutil.Process(entry["pid"])
                with process.oneshot():
                    times = process.cpu_times()
                    cpu = times.user + times.system
                    entry["rss"] = process.memory_info().rss
                    try:
                        entry["uss"] = process.memory_full_info().uss
                    except psutil.AccessDenied:
                        pass
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            seen[entry["pid"]] = (now, cpu)
            before = self.last.get(entry["pid"])
            if before is not None and now > before[0]:
                entry["cpu_percent"] = round(100.0 * (cpu - before[1]) / (now - before[0]), 1)
        self.last = seen


COLUMNS = ("IDX", "PID", "GEN", "STATE", "BUSY FOR", "PEER", "CONNS", "CPU%", "RSS", "USS", "AGE")
NUMERIC = {"IDX", "PID", "GEN", "BUSY FOR", "CONNS", "CPU%", "RSS", "USS", "AGE"}  # right-aligned


def render(report: dict[str, Any], now: float | None = None) -> str:
    """The table a person reads at a glance: the master on top, one row per worker."""
    now = time.time() if now is None else now
    m, stats = report["master"], report["stats"]
    generation = f"generation {m['generation']}"
    if m["pending_generation"] is not None:
        generation += f" (reloading to {m['pending_generation']})"
    live = [w for w in report["workers"] if w["state"] != "stopping"]
    lines = [
        f"prefork master {m['pid']} [{m['name']}]  up {duration(now - m['started'])}  {generation}"
        f"  workers {len(live)}/{m['target_workers']}"
        + (f" x {m['threads']} threads" if m["threads"] > 1 else "")
        + (f" (pool {m['pool']['min_workers']}-{m['pool']['max_workers']}, spare {m['pool']['spare']})"
           if m.get("pool") else "")
        + (f"  {m['phase'].upper()}" if m.get("phase", "serving") != "serving" else ""),
        "listening on " + (", ".join(m["listeners"]) or "nothing"),
        f"connections {stats['connections']}  restarts {restarts_text(stats['restarts'])}"
        f"  reloads {stats['reloads']} ({stats['reload_failures']} failed)  boot failures {stats['boot_failures']}",
        "",
    ]
    rows = [COLUMNS] + [worker_row(w, now) for w in report["workers"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        cells = (cell.rjust(width) if column in NUMERIC else cell.ljust(width)
                 for column, cell, width in zip(COLUMNS, row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def worker_row(w: dict[str, Any], now: float) -> tuple[str, ...]:
    state = w["state"]
    if w["threads"] > 1:
        state += f" {w['busy_threads']}/{w['threads']}"
    return (
        str(w["index"]), str(w["pid"]), str(w["generation"]), state,
        duration(w["busy_for"]) if w["busy_for"] is not None else "",
        w["peer"] or "", str(w["requests"]),
        f"{w['cpu_percent']:.1f}" if w.get("cpu_percent") is not None else "-",
        size(w.get("rss")), size(w.get("uss")), duration(now - w["started"]),
    )


def restarts_text(restarts: dict[str, int]) -> str:
    total = sum(restarts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{why} {n}" for why, n in sorted(restarts.items())) + ")"


def duration(seconds: float) -> str:
    """``4.2s``, ``3m07s``, ``2h05m``, ``3d04h``: short, and precise where it matters."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M", "G"):
        if amount < 1024 or unit == "G":
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return f"{amount:.1f}G"
