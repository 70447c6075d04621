"""How much of everything to run: the full plan, and the smoke plan that proves the harness in seconds."""

from __future__ import annotations

from dataclasses import dataclass

from .client import cpu_count


@dataclass(frozen=True)
class Plan:
    workers: int  # N for the throughput comparison
    rounds: int  # side-by-side rounds (prefork and floor alternate, ABBA)
    duration: float  # seconds per measurement window
    fairness_workers: int
    kill_trials: int
    hup_trials: int
    startup_sizes: tuple[int, ...]
    startup_trials: int
    storm_seconds: float
    idle_seconds: float
    reloads: int
    scaling: bool  # the client-is-not-the-bottleneck runs
    smoke: bool = False


def full(workers: int | None = None, rounds: int = 5, duration: float = 3.0) -> Plan:
    n = workers or max(2, cpu_count())
    return Plan(workers=n, rounds=rounds, duration=duration, fairness_workers=max(4, n),
                kill_trials=30, hup_trials=5, startup_sizes=(1, 8, 32), startup_trials=3,
                storm_seconds=5.0, idle_seconds=10.0, reloads=100, scaling=True)


def smoke() -> Plan:
    return Plan(workers=2, rounds=1, duration=0.2, fairness_workers=2, kill_trials=1, hup_trials=1,
                startup_sizes=(1,), startup_trials=1, storm_seconds=0.3, idle_seconds=0.3, reloads=1,
                scaling=False, smoke=True)
