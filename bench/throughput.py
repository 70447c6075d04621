"""Raw TCP throughput, prefork against the floor, side by side in the same run.

Both servers run at once with the same N (an idle server costs nothing: its
workers sleep in accept()). Rounds alternate which one is loaded first, so a
slow drift of the machine's load favours neither.

A sync worker serves one connection at a time, so the echo test uses C = N
persistent connections: a connection beyond N would wait in the accept queue
until another closes.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import servers
from .client import run_load
from .plan import Plan
from .report import Section, Table, median, ratio

TARGET = 0.95


@dataclass
class Sample:
    rate: float
    client_cpu: float  # seconds
    server_cpu: float  # seconds
    ops: int
    failed: int


def measure(server: servers.BenchServer, kind: str, processes: int, duration: float) -> Sample:
    before = server.cpu_seconds()
    result = run_load(kind, server.address, processes, duration)
    used = server.cpu_seconds() - before
    return Sample(result.rate, result.client_cpu, used, result.ops, result.failed)


Key = tuple[str, str, str]  # (transport, server name, load kind)
TRANSPORTS = ("tcp", "unix")


def run(plan: Plan) -> Section:
    n = plan.workers
    loads = {"echo": n, "connect": 2 * n}  # client processes: connect keeps the accept queue non-empty
    samples: dict[Key, list[Sample]] = {}
    pairs = {t: (servers.prefork("prefork.examples:echo", n, binds=[_bind(t, "prefork")]),
                 servers.floor(n, bind=_bind(t, "floor"))) for t in TRANSPORTS}
    scaling: list[tuple[int, Sample]] = []
    try:
        everything = [server for pair in pairs.values() for server in pair]
        for server in everything:
            server.start()  # all at once: boots overlap, and idle servers cost nothing while others run
        for server in everything:
            servers.wait_echo(server)
        for round_ in range(plan.rounds):
            for transport, (pf, fl) in pairs.items():
                order = (pf, fl) if round_ % 2 == 0 else (fl, pf)
                for kind, processes in loads.items():
                    for server in order:
                        samples.setdefault((transport, server.name, kind), []).append(
                            measure(server, kind, processes, plan.duration))
        if plan.scaling:
            scaling = client_scaling(pairs["tcp"][1], n, plan)
    finally:
        for pair in pairs.values():
            for server in pair:
                server.stop()
    section = Section("Throughput: prefork vs the floor")
    section.tables.append(ratio_table(samples, plan, loads))
    section.tables.append(cost_table(samples, scaling))
    return section


def _bind(transport: str, name: str) -> str:
    return servers.unix_bind(f"{name}.sock") if transport == "unix" else servers.tcp_bind()


def ratio_table(samples: dict[Key, list[Sample]], plan: Plan, loads: dict[str, int]) -> Table:
    table = Table(
        f"Throughput, N = {plan.workers} workers, {plan.rounds} rounds of {plan.duration:g} s (medians)",
        ["measure", "prefork", "floor", "ratio", "per-round ratios", "server CPU ratio", "failed"], summary=True)
    names = {"echo": f"64-byte echo round trips/s, C = {loads['echo']} persistent connections",
             "connect": f"new connections/s (connect, 64-byte round trip, close), {loads['connect']} clients"}
    for transport in TRANSPORTS:
        for kind in loads:
            pf, fl = samples[(transport, "prefork", kind)], samples[(transport, "floor", kind)]
            per_round = [ratio(a.rate, b.rate) for a, b in zip(pf, fl, strict=True)]
            table.add(f"{transport}: {names[kind]}", median([s.rate for s in pf]), median([s.rate for s in fl]),
                      ratio(median([s.rate for s in pf]), median([s.rate for s in fl])),
                      f"{min(per_round):.2f} to {max(per_round):.2f}",
                      ratio(cpu_per_op(fl), cpu_per_op(pf)), sum(s.failed for s in pf + fl))
    table.notes += [
        "ratio = prefork median / floor median (target ≥ 0.95); the floor is `bench/floor.py` "
        "(blocking accept, recv/sendall, close, nothing else).",
        "server CPU ratio = the floor's server CPU per operation / prefork's (1.0 = no overhead at all). "
        "Throughput on a small machine is bounded by client and server sharing the cores, which dilutes "
        "a server's overhead; CPU per operation shows it undiluted.",
    ]
    return table


def cpu_per_op(runs: list[Sample]) -> float:
    return sum(s.server_cpu for s in runs) / (sum(s.ops for s in runs) or 1)


def cost_table(samples: dict[Key, list[Sample]], scaling: list[tuple[int, Sample]]) -> Table:
    table = Table("Is the load client the bottleneck?", ["run", "ops/s", "client CPU µs/op", "server CPU µs/op"])
    for (transport, name, kind), runs in sorted(samples.items()):
        ops = sum(s.ops for s in runs) or 1
        table.add(f"{transport} {kind} vs {name}", median([s.rate for s in runs]),
                  1e6 * sum(s.client_cpu for s in runs) / ops, 1e6 * cpu_per_op(runs))
    for processes, sample in scaling:
        ops = sample.ops or 1
        table.add(f"tcp connect vs floor, {processes} client processes", sample.rate,
                  1e6 * sample.client_cpu / ops, 1e6 * sample.server_cpu / ops)
    table.notes.append("CPU per operation, all client processes vs all server processes (user + system).")
    if scaling:
        table.notes.append("Client scaling: if more client processes do not raise the rate, the client processes "
                           "are not what limits it; the machine's cores, shared by both sides, are.")
    return table


def client_scaling(server: servers.BenchServer, n: int, plan: Plan) -> list[tuple[int, Sample]]:
    return [(p, measure(server, "connect", p, plan.duration)) for p in (n, 2 * n, 4 * n)]
