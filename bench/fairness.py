"""Fairness: how many connections each worker serves under steady load, by how workers wait.

The server answers every connection with the serving worker's pid
(``bench.apps:pid``), so the client counts connections per worker directly.
Two load levels: light (fewer clients than workers, so some workers are idle
at any moment, and who gets woken decides the shares) and saturating (more
clients than workers, so every worker is busy all the time).
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter

import psutil

from . import servers
from .client import Load
from .plan import Plan
from .report import Section, Table, ratio

MODES = {
    "single listener (blocking accept)": ([], 1),
    "two listeners (epoll, EPOLLEXCLUSIVE)": ([], 2),
    "--reuse-port (one socket per worker)": (["--reuse-port"], 1),
}


def run(plan: Plan) -> Section:
    n = plan.fairness_workers
    loads = {"light": max(1, n // 2), "saturating": 2 * n}
    section = Section("Fairness: connections per worker")
    table = Table(f"Fairness, N = {n} workers, {plan.duration:g} s per run",
                  ["how workers wait", "load (clients)", "connections/s", "max/min", "shares by worker index (%)"],
                  summary=True)
    shares: dict[str, list[float]] = {}
    started = {}
    for mode, (extra, listeners) in MODES.items():
        binds = [servers.tcp_bind() for _ in range(listeners)]
        started[mode] = (servers.prefork("bench.apps:pid", n, extra=extra, binds=binds).start(), binds)
    try:
        for mode, (server, binds) in started.items():
            server.wait_booted()
            for load, clients in loads.items():
                by_index = per_index(count_per_worker(server, binds, clients, plan.duration))
                total = sum(by_index) or 1
                share = [c / total for c in by_index]
                shares[f"{mode}, {load}"] = share
                table.add(mode, f"{load} ({clients})", total / plan.duration,
                          ratio(max(by_index), min(by_index)), " / ".join(f"{100 * s:.0f}" for s in share))
            server.stop()
    finally:
        for server, _ in started.values():
            server.stop()
    table.notes += [
        "max/min = connections of the busiest worker / of the least busy (1.0 = perfectly even; ∞ = a worker "
        "got none).",
        "Blocking accept(): the kernel queues sleeping workers first-in first-out, so the worker that has waited "
        "longest takes the next connection: round robin among the idle.",
        "epoll with EPOLLEXCLUSIVE: the kernel wakes the first idle waiter in the socket's wait queue, in an "
        "order that never changes by itself (left alone, the same few workers take most connections: max/min "
        "10 to 100 here, as nginx and gunicorn see). A worker that has served re-registers at most every 2 ms "
        "(two epoll_ctl calls), which moves it to the back of the queue: the idle workers take turns.",
        "--reuse-port: the kernel hashes each connection's addresses to one worker's socket, whether that worker "
        "is idle or not: even in the long run, but a connection can wait behind a busy worker while others idle.",
    ]
    section.tables.append(table)
    section.plot_data["fairness"] = shares
    return section


def count_per_worker(server: servers.BenchServer, binds: list[str], clients: int, duration: float) -> Counter[int]:
    """Connections per worker pid; with several listeners the clients are spread over them."""
    addresses = [servers.address_of(bind) for bind in binds]
    groups = [clients // len(addresses) + (1 if i < clients % len(addresses) else 0) for i in range(len(addresses))]
    running = [Load("pid", address, count, duration) for address, count in zip(addresses, groups, strict=True)
               if count]
    counts: Counter[int] = Counter()
    for load in running:
        counts.update(load.join().pids)
    for pid in server.worker_pids():
        counts.setdefault(pid, 0)  # a worker that served nothing counts, as zero
    return counts


def per_index(counts: Counter[int]) -> list[int]:
    """Counts ordered by worker index (read from the process title)."""
    indexed = []
    for pid, count in counts.items():
        indexed.append((worker_index(pid), count))
    return [count for _, count in sorted(indexed)]


def worker_index(pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        match = re.search(r"#(\d+)", " ".join(psutil.Process(pid).cmdline()))
        if match:
            return int(match.group(1))
    return 1 << 30
