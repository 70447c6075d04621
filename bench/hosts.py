"""Many hosts behind HAProxy (issue 18): the five scenarios of tests/test_many_hosts.py, as figures.

Three prefork hosts in network namespaces behind a real HAProxy, four load clients
(tests/netns.py and tests/hosts_scenarios.py build and run all of it, under the prefix
``pfb`` so that it never meets the test's ``pft``). Per scenario: requests, failed ones by kind, and for the drain
and the kill the seconds until the host left HAProxy's pool and until it served again.
Needs root, ``ip netns`` and HAProxy; the section is skipped otherwise, and in the
smoke run (the test runs it there).

    python -m bench.hosts [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .plan import Plan
from .report import Section, Table, median

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import hosts_scenarios as scenarios  # noqa: E402  (tests/: the topology and the scenarios)
import netns  # noqa: E402

Scenario = Callable[[scenarios.Cluster, scenarios.Load], dict[str, Any]]
SCENARIOS: list[tuple[str, Scenario]] = [
    ("1. steady load", scenarios.steady),
    ("2. rolling HUP, host by host", scenarios.rolling_reload),
    ("3. rolling USR2, host by host", scenarios.rolling_upgrade),
    ("4. drain one host (TERM, --shutdown-delay 2)", scenarios.drain),
    ("5. kill -9 of one master, restarted", scenarios.kill),
]


def measure(rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Each scenario's figures, ``rounds`` times, on one cluster (every host up before each)."""
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="prefork-hosts-") as directory:
        cluster = scenarios.Cluster("pfb", Path(directory))
        try:
            cluster.open()
            for _ in range(rounds):
                for name, scenario in SCENARIOS:
                    cluster.ensure_all_up()
                    with scenarios.Load(cluster.topology) as load:
                        figures[name].append(scenario(cluster, load))
        finally:
            cluster.close()
    return figures


def seconds(runs: list[dict[str, Any]], key: str) -> float:
    values = [run[key] for run in runs if run.get(key) is not None]
    return median(values) if values else float("nan")


def run(rounds: int) -> Section:
    section = Section("Many hosts")
    reason = netns.unavailable()
    if reason:
        section.skipped = reason
        return section
    figures = measure(rounds)
    table = Table(f"Three prefork hosts behind HAProxy, 4 clients (rounds: {rounds}; times in s, medians)",
                  ["scenario", "requests", "failed", "failed by kind", "left the pool", "stopped accepting",
                   "serving again"], summary=True)
    for name, runs in figures.items():
        kinds: Counter[str] = Counter()
        for one in runs:
            kinds.update(one["failures"])
        table.add(name, sum(one["requests"] for one in runs), sum(one["failed"] for one in runs),
                  ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common()) or "",
                  seconds(runs, "left_pool_after"), seconds(runs, "stopped_accepting_after"),
                  seconds(runs, "serving_again_after"))
    table.notes += [
        "left the pool: from the signal until HAProxy's status for the host is DOWN (checks every 300 ms, "
        "fall 2); n/a when it stayed UP until the master had exited.",
        "stopped accepting: from TERM until the master's phase (prefork_phase) left 'shutdown delay'.",
        "serving again: from the restart (as systemd's Restart= would) until a client got an answer from it.",
        "kill -9: only requests in flight to that host may fail (each client has at most one).",
    ]
    section.tables.append(table)
    return section


def section(plan: Plan) -> Section:
    if plan.smoke:
        return Section("Many hosts", skipped="not in the smoke run (tests/test_many_hosts.py runs it)")
    return run(min(plan.rounds, 3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hosts", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.rounds)
    if result.skipped:
        print(f"skipped: {result.skipped}")
    for table in result.tables:
        sys.stdout.write(table.markdown())


if __name__ == "__main__":
    main()
