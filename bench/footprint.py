"""Footprint: memory, idle cost, and whether 100 reloads leak anything."""

from __future__ import annotations

import contextlib
import signal
import time
from functools import partial
from pathlib import Path

import psutil

from . import servers
from .client import Load
from .plan import Plan
from .report import Section, Table, median, ratio

MB = 1024 * 1024


def run(plan: Plan) -> Section:
    n = plan.fairness_workers
    section = Section("Footprint")
    memory = Table(f"Memory, N = {n} idle workers (MB)", ["server", "master RSS", "worker USS (median)",
                                                          "worker RSS (median)"], summary=True)
    idle = Table(f"Idle cost over {plan.idle_seconds:g} s", ["server", "master CPU (ms)", "master wake-ups/s",
                                                             "workers' CPU (ms)"], summary=True)
    variants = {"prefork": servers.prefork("prefork.examples:echo", n),
                "prefork --preload": servers.prefork("prefork.examples:echo", n, extra=["--preload"]),
                "floor (reference)": servers.floor(n)}
    try:
        for server in variants.values():
            server.start()
        for server in variants.values():
            servers.wait_echo(server)
        time.sleep(0.2 if plan.smoke else 1.0)  # let boot-time allocations settle
        measured = {name: memory_of(server) for name, server in variants.items()}
        for name, figures in measured.items():
            memory.add(name, *figures)
        # One window for all three: each is idle while the others are.
        for name, cost in idle_costs(variants, plan.idle_seconds).items():
            idle.add(name, *cost)
    finally:
        for server in variants.values():
            server.stop()
    memory.notes.append("USS = memory only that process holds (psutil); a worker's shared copy-on-write pages "
                        "with the master are not in it.")
    idle.notes.append("Wake-ups = voluntary + involuntary context switches of the master (/proc/PID/status). "
                      "Target: no measurable CPU, at most one wake-up a second.")
    section.tables += [memory, lean(measured), idle, reloads(plan), reload_memory(plan)]
    return section


def lean(measured: dict[str, tuple[float, float, float]]) -> Table:
    """The lean-process goals: an idle worker's USS against the floor's, and the master's RSS."""
    table = Table("Lean processes (goals)", ["", "measured", "goal"], summary=True)
    floor_uss = measured["floor (reference)"][1]
    for name in ("prefork", "prefork --preload"):
        master_rss, uss, _ = measured[name]
        table.add(f"{name}: idle worker USS / floor's", ratio(uss, floor_uss), "<= 1.5")
        table.add(f"{name}: master RSS (MB)", master_rss, "<= 20")
    return table


def memory_of(server: servers.BenchServer) -> tuple[float, float, float]:
    master = psutil.Process(server.pid)
    uss, rss = [], []
    for pid in server.worker_pids():
        with contextlib.suppress(psutil.Error):
            info = psutil.Process(pid).memory_full_info()
            uss.append(info.uss / MB)
            rss.append(info.rss / MB)
    return master.memory_info().rss / MB, median(uss), median(rss)


def context_switches(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


def idle_costs(group: dict[str, servers.BenchServer], seconds: float) -> dict[str, tuple[float, float, float]]:
    """Per server: master CPU (ms), master wake-ups per second, workers' CPU (ms) over ``seconds``."""
    masters = {name: psutil.Process(server.pid) for name, server in group.items()}
    workers = {name: [psutil.Process(pid) for pid in server.worker_pids()] for name, server in group.items()}

    def snapshot(name: str) -> tuple[float, int, float]:
        master = masters[name]
        return _cpu(master), context_switches(master.pid), sum(_cpu(w) for w in workers[name])

    before = {name: snapshot(name) for name in group}
    time.sleep(seconds)
    costs = {}
    for name in group:
        (cpu0, switches0, workers0), (cpu1, switches1, workers1) = before[name], snapshot(name)
        costs[name] = (1000 * (cpu1 - cpu0), (switches1 - switches0) / seconds, 1000 * (workers1 - workers0))
    return costs


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def reloads_done(server: servers.BenchServer, count: int) -> bool:
    return server.log().count(b"reload done") >= count


def reloads(plan: Plan) -> Table:
    """HUP, wait until the new generation serves and the old one has exited; ``plan.reloads`` times."""
    n = 2
    table = Table(f"After {plan.reloads} HUP reloads (N = {n})", ["", "before", "after"], summary=True)
    with servers.prefork("prefork.examples:echo", n).start() as server:
        server.wait_booted()
        master = psutil.Process(server.pid)
        fds0, rss0, children0 = master.num_fds(), master.memory_info().rss / MB, len(server.worker_pids())
        times = []
        for done in range(1, plan.reloads + 1):
            start = time.monotonic()
            server.signal(signal.SIGHUP)
            servers.wait_for(partial(reloads_done, server, done), 30.0, f"reload {done}")
            servers.wait_for(lambda: len(server.worker_pids()) == n, 30.0, "the old generation to exit")
            times.append(1000 * (time.monotonic() - start))
        fds1, rss1, children1 = master.num_fds(), master.memory_info().rss / MB, len(server.worker_pids())
    table.add("master open fds", fds0, fds1)
    table.add("master RSS (MB)", rss0, rss1)
    table.add("workers", children0, children1)
    table.add("reload time, median ms (HUP → old generation exited)", "", median(times))
    return table


RELOAD_STRATEGIES = {"generation": ["--reload-strategy", "generation"],
                     "rolling, K = 1": ["--reload-strategy", "rolling", "--reload-batch", "1"]}


def reload_memory(plan: Plan) -> Table:
    """Peak total USS (master and workers) during one HUP of an app holding 50 MB per worker, under load."""
    n, ballast = (2, 5) if plan.smoke else (4, 50)
    seconds = max(plan.storm_seconds, 1.0)
    table = Table(f"Memory during a reload, N = {n}, {ballast} MB per worker, under load ({2 * n} clients)",
                  ["strategy", "total USS before (MB)", "peak total USS (MB)", "peak workers", "connections",
                   "failed"], summary=True)
    for name, extra in RELOAD_STRATEGIES.items():
        with servers.prefork("bench.apps:ballast()", n, extra=extra).start(env={"BALLAST_MB": str(ballast)}) \
                as server:
            server.wait_booted(timeout=60.0)
            before = total_uss(server)
            load = Load("pid", server.address, 2 * n, seconds)
            server.signal(signal.SIGHUP)
            peak, peak_workers = before, 0
            while not (reloads_done(server, 1) and len(server.worker_pids()) == n):
                peak, peak_workers = max(peak, total_uss(server)), max(peak_workers, len(server.worker_pids()))
                time.sleep(0.02)
            result = load.join()
            table.add(name, before, peak, peak_workers, result.ops, result.failed)
    table.notes += [f"USS sampled every 20 ms from the HUP until the old workers have exited; the load "
                    f"(`bench.apps:pid`, {seconds:g} s) runs throughout. Bound: generation holds 2N workers at "
                    "the peak, rolling N + K. Target: 0 failed for both."]
    return table


def total_uss(server: servers.BenchServer) -> float:
    total = 0.0
    for process in server.tree():
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().uss / MB
    return total
