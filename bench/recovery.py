"""Recovery: how fast prefork replaces what it lost, and whether clients notice.

"Accepting" is detected exactly, not from the log: the server runs
``bench.apps:probe``, which answers with its pid and, when asked, stays busy
until the client lets go. Holding the other workers busy means the next
connection can only be accepted by the worker being waited for, so the
moment its pid answers is the moment it accepted.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sys
import time
from functools import partial
from typing import Any

import psutil

from . import servers
from .client import Load, ask_pid
from .plan import Plan
from .report import Section, Table, median, percentile

PROBE_APP = "bench.apps:probe"
KILL_TARGET_MS = 50.0
HUP_INTERVAL = 0.05  # faster than a generation boots: most reloads are superseded before they finish
KILL_INTERVAL = 0.2


def run(plan: Plan) -> Section:
    section = Section("Recovery")
    kills = kill_recovery(plan)
    hups = hup_replacement(plan)
    startups = {n: startup(n, plan.startup_trials) for n in plan.startup_sizes}
    times = Table("Recovery and startup times (milliseconds)",
                  ["event", "trials", "median", "p90", "max", "target"], summary=True)
    times.add(f"kill -9 of a worker → its replacement accepting (N = {plan.fairness_workers})", len(kills),
              median(kills), percentile(kills, 0.9), max(kills, default=float("nan")), f"< {KILL_TARGET_MS:g}")
    times.add(f"HUP → all N = {plan.fairness_workers} new workers accepting", len(hups["new"]),
              median(hups["new"]), percentile(hups["new"], 0.9), max(hups["new"], default=float("nan")), "")
    times.add("HUP → old generation exited", len(hups["old"]), median(hups["old"]),
              percentile(hups["old"], 0.9), max(hups["old"], default=float("nan")), "")
    for n, samples in startups.items():
        times.add(f"`prefork run` → all N = {n} workers accepting", len(samples), median(samples),
                  percentile(samples, 0.9), max(samples, default=float("nan")), "")
    base = interpreter_startup(plan.startup_trials)
    times.add("reference: `python -c 'import prefork.master'`", len(base), median(base),
              percentile(base, 0.9), max(base, default=float("nan")), "")
    times.notes.append("Accepting = the new worker's pid answered a connection while every other worker was held "
                       "busy (startup: the N-th distinct pid answered, all earlier ones held).")
    section.tables.append(times)
    section.tables.append(storms(plan))
    section.plot_data["recovery"] = {"kill -9 → accepting": kills, "HUP → all new accepting": hups["new"],
                                     **{f"startup N={n}": s for n, s in startups.items()}}
    return section


# --- kill -9 ---


def kill_recovery(plan: Plan) -> list[float]:
    n = plan.fairness_workers
    samples = []
    with servers.prefork(PROBE_APP, n).start() as server:
        server.wait_booted()
        for _ in range(plan.kill_trials):
            samples.append(1000 * kill_one(server))
            server.wait_booted()
    return samples


def kill_one(server: servers.BenchServer) -> float:
    """Hold all workers but one, kill that one, time until a new pid answers."""
    held = hold(server.address, server.workers - 1)
    try:
        idle = server.worker_pids() - set(held)
        if len(idle) != 1:
            raise RuntimeError(f"expected one idle worker, found {sorted(idle)}")
        victim = idle.pop()
        start = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # Connect only once the victim is dead: a connection queued before it died could be
        # accepted by it on the way out and lost with it, which would time the wrong thing.
        servers.wait_for(lambda: is_dead(victim), 10.0, f"pid {victim} to die", interval=0.0002)
        pid, _ = ask_pid(server.address, timeout=10.0)
        elapsed = time.monotonic() - start
        if pid in held or pid == victim:
            raise RuntimeError(f"pid {pid} answered, not a replacement")
        return elapsed
    finally:
        release(held)


def hold(address: Any, count: int) -> dict[int, socket.socket]:
    """Keep ``count`` workers busy; each answers with its pid."""
    held: dict[int, socket.socket] = {}
    while len(held) < count:
        pid, sock = ask_pid(address, hold=True, timeout=10.0)
        assert sock is not None
        held[pid] = sock
    return held


def release(held: dict[int, socket.socket]) -> None:
    for sock in held.values():
        sock.close()


def all_dead(pids: set[int]) -> bool:
    return all(is_dead(pid) for pid in pids)


def is_dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- HUP ---


def hup_replacement(plan: Plan) -> dict[str, list[float]]:
    n = plan.fairness_workers
    result: dict[str, list[float]] = {"new": [], "old": []}
    with servers.prefork(PROBE_APP, n).start() as server:
        server.wait_booted()
        for _ in range(plan.hup_trials):
            old = server.worker_pids()
            start = time.monotonic()
            server.signal(signal.SIGHUP)
            held = hold_new(server.address, n, old)
            result["new"].append(1000 * (time.monotonic() - start))
            release(held)
            servers.wait_for(partial(all_dead, old), 30.0, "the old generation to exit")
            result["old"].append(1000 * (time.monotonic() - start))
            server.wait_booted()
    return result


def hold_new(address: Any, count: int, old: set[int], timeout: float = 30.0) -> dict[int, socket.socket]:
    """Hold ``count`` workers that are not in ``old``; old workers that answer are let go at once."""
    deadline = time.monotonic() + timeout
    held: dict[int, socket.socket] = {}
    while len(held) < count:
        if time.monotonic() > deadline:
            release(held)
            raise TimeoutError(f"only {len(held)} new workers accepting after {timeout}s")
        try:
            pid, sock = ask_pid(address, hold=True, timeout=10.0)
        except (ConnectionError, FileNotFoundError):
            time.sleep(0.001)  # not listening yet (startup)
            continue
        assert sock is not None
        if pid in old or pid in held:
            sock.close()
            time.sleep(0.0005)
        else:
            held[pid] = sock
    return held


# --- startup ---


def startup(n: int, trials: int) -> list[float]:
    samples = []
    for _ in range(trials):
        server = servers.prefork(PROBE_APP, n)
        with server:
            start = time.monotonic()
            server.start()
            held = hold_new(server.address, n, set())
            samples.append(1000 * (time.monotonic() - start))
            release(held)
    return samples


def interpreter_startup(trials: int) -> list[float]:
    import subprocess

    samples = []
    for _ in range(trials):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "import prefork.master"], check=True, cwd=servers.ROOT)
        samples.append(1000 * (time.monotonic() - start))
    return samples


# --- failed connections while the master is being told things ---


def storms(plan: Plan) -> Table:
    n = plan.fairness_workers
    table = Table(f"Failed connections under load (N = {n}, {plan.storm_seconds:g} s each, {2 * n} clients)",
                  ["while", "signals sent", "connections", "failed", "why"], summary=True)
    started = {name: servers.prefork("bench.apps:pid", n).start() for name in STORMS}
    try:
        for name, action in STORMS.items():
            server = started[name].wait_booted()
            load = Load("pid", server.address, 2 * n, plan.storm_seconds)
            sent = action(server, load.until)
            result = load.join()
            why = "; ".join(f"{reason} x{count}" for reason, count in result.failures.most_common(3))
            table.add(name, sent if sent >= 0 else "not available", result.ops, result.failed, why or "")
            server.stop()
    finally:
        for server in started.values():
            server.stop()
    table.notes += [
        f"HUP storm: a HUP every {HUP_INTERVAL:g} s, most superseding a reload still under way.",
        "TTIN/TTOU: one more worker, one fewer, alternately every 0.1 s.",
        "USR2: binary upgrades one after another (each waits for the old master to exit).",
        f"kill -9: a worker chosen at random is killed every {KILL_INTERVAL:g} s; only a connection it had "
        "accepted and not yet answered can fail (the accept queue belongs to the socket, not to the worker), "
        "so the target there is failed ≤ signals sent.",
        "Target: 0 failed (kill -9: at most one per kill).",
    ]
    return table


def _nothing(server: servers.BenchServer, until: float) -> int:
    time.sleep(max(0.0, until - time.monotonic()))
    return 0


def _hup_storm(server: servers.BenchServer, until: float) -> int:
    return _every(server.pid, until, HUP_INTERVAL, [signal.SIGHUP])


def _ttin_ttou(server: servers.BenchServer, until: float) -> int:
    return _every(server.pid, until, 0.1, [signal.SIGTTIN, signal.SIGTTOU])


def _every(pid: int, until: float, interval: float, cycle: list[int]) -> int:
    sent = 0
    while time.monotonic() < until - interval:
        os.kill(pid, cycle[sent % len(cycle)])
        sent += 1
        time.sleep(interval)
    return sent


def _usr2(server: servers.BenchServer, until: float) -> int:
    """Upgrade, wait until the old master has gone, upgrade the new one, until the window closes."""
    master, sent = server.pid, 0
    while time.monotonic() < until - 1.0:
        os.kill(master, signal.SIGUSR2)
        sent += 1
        servers.wait_for(partial(upgraded_or_refused, server, master), 30.0, "the old master to exit")
        if not is_dead(master):
            return -1  # this prefork has no binary upgrade yet
        master = servers.wait_for(partial(find_master, server.pid, master), 10.0, "the new master")
    _nothing(server, until)
    return sent


def _kill_workers(server: servers.BenchServer, until: float) -> int:
    master, sent = psutil.Process(server.pid), 0
    while time.monotonic() < until - KILL_INTERVAL:
        with contextlib.suppress(psutil.Error):
            workers = [c for c in master.children() if c.status() != psutil.STATUS_ZOMBIE]
            if workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(random.choice(workers).pid, signal.SIGKILL)
                    sent += 1
        time.sleep(KILL_INTERVAL)
    return sent


def upgraded_or_refused(server: servers.BenchServer, master: int) -> bool:
    return is_dead(master) or b"not available" in server.log()


def find_master(pgid: int, exclude: int) -> int | None:
    """The live prefork master in process group ``pgid`` (an upgraded master is no child of ours)."""
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if process.pid == exclude or os.getpgid(process.pid) != pgid:
                continue
            if "master" in " ".join(process.info["cmdline"] or []) and not is_dead(process.pid):
                return process.pid
    return None


STORMS = {"nothing (baseline)": _nothing, "HUP storm": _hup_storm, "TTIN/TTOU": _ttin_ttou, "USR2 upgrades": _usr2,
          "kill -9 of workers": _kill_workers}
