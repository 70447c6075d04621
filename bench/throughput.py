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
    client_cpu: float  # seconds, user + system
    server_user: float  # seconds: the Python side of the server's work
    server_system: float  # seconds: the kernel's (TCP, scheduling), about the same for any server
    ops: int
    failed: int

    @property
    def server_cpu(self) -> float:
        return self.server_user + self.server_system


def measure(server: servers.BenchServer, kind: str, processes: int, duration: float) -> Sample:
    user0, system0 = server.cpu_times()
    result = run_load(kind, server.address, processes, duration)
    user1, system1 = server.cpu_times()
    return Sample(result.rate, result.client_cpu, user1 - user0, system1 - system0, result.ops, result.failed)


def per_op(runs: list[Sample], field: str) -> float:
    """Median over rounds of a CPU figure per operation, in microseconds."""
    return median([1e6 * getattr(s, field) / s.ops for s in runs if s.ops])


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
    section.tables.append(cpu_table(samples, loads))
    section.tables.append(client_table(samples, scaling))
    return section


def _bind(transport: str, name: str) -> str:
    return servers.unix_bind(f"{name}.sock") if transport == "unix" else servers.tcp_bind()


NAMES = {"echo": "64-byte echo round trips/s, C = {} persistent connections",
         "connect": "new connections/s (connect, 64-byte round trip, close), {} clients"}


def ratio_table(samples: dict[Key, list[Sample]], plan: Plan, loads: dict[str, int]) -> Table:
    table = Table(
        f"Throughput, N = {plan.workers} workers, {plan.rounds} rounds of {plan.duration:g} s (medians)",
        ["measure", "prefork", "floor", "ratio", "per-round ratios", "failed"], summary=True)
    for transport in TRANSPORTS:
        for kind, clients in loads.items():
            pf, fl = samples[(transport, "prefork", kind)], samples[(transport, "floor", kind)]
            per_round = [ratio(a.rate, b.rate) for a, b in zip(pf, fl, strict=True)]
            pf_rate, fl_rate = median([s.rate for s in pf]), median([s.rate for s in fl])
            table.add(f"{transport}: {NAMES[kind].format(clients)}", pf_rate, fl_rate, ratio(pf_rate, fl_rate),
                      f"{min(per_round):.2f} to {max(per_round):.2f}", sum(s.failed for s in pf + fl))
    table.notes.append("ratio = prefork median / floor median (target ≥ 0.95); the floor is `bench/floor.py` "
                       "(blocking accept, recv/sendall, close, nothing else), run side by side with the same N.")
    table.notes.append("C = N: a worker serves one connection at a time, so a persistent connection beyond N would "
                       "wait in the accept queue until another closed.")
    return table


def cpu_table(samples: dict[Key, list[Sample]], loads: dict[str, int]) -> Table:
    table = Table("Server CPU per operation, µs (medians over rounds)",
                  ["measure", "prefork user", "floor user", "prefork user+sys", "floor user+sys", "ratio"],
                  summary=True)
    for transport in TRANSPORTS:
        for kind in loads:
            pf, fl = samples[(transport, "prefork", kind)], samples[(transport, "floor", kind)]
            table.add(f"{transport}: {kind}", per_op(pf, "server_user"), per_op(fl, "server_user"),
                      per_op(pf, "server_cpu"), per_op(fl, "server_cpu"),
                      ratio(per_op(fl, "server_cpu"), per_op(pf, "server_cpu")))
    table.notes += [
        "user = the server's own (Python) work, sys = the kernel's; ratio = floor user+sys / prefork user+sys "
        "(1.0 = no overhead).",
        "On a machine with few cores the client and the server share the CPU, so a server's overhead shows only "
        "diluted in the throughput ratio; CPU per operation shows it undiluted.",
    ]
    return table


def client_table(samples: dict[Key, list[Sample]], scaling: list[tuple[int, Sample]]) -> Table:
    table = Table("Is the load client the bottleneck?", ["run", "ops/s", "client CPU µs/op", "server CPU µs/op"])
    for (transport, name, kind), runs in sorted(samples.items()):
        table.add(f"{transport} {kind} vs {name}", median([s.rate for s in runs]), per_op(runs, "client_cpu"),
                  per_op(runs, "server_cpu"))
    for processes, sample in scaling:
        table.add(f"tcp connect vs floor, {processes} client processes", sample.rate,
                  per_op([sample], "client_cpu"), per_op([sample], "server_cpu"))
    table.notes.append("CPU per operation of all client processes and of all server processes (user + system). "
                       "Over loopback the kernel charges much of both ends' TCP work to the process that makes "
                       "the system call, so a connecting client pays for the handshake.")
    if scaling:
        # The connect runs above use 2N client processes: does doubling that raise the rate?
        (used, low), (many, high) = (scaling[1][0], scaling[1][1].rate), (scaling[2][0], scaling[2][1].rate)
        verdict = ("did not raise the rate: the client processes are not what limits it; the cores, shared by "
                   "both sides, are" if high <= 1.1 * low else "raised the rate: the client limited it")
        table.notes.append(f"Client scaling: {used} (as used above) → {many} client processes "
                           f"({low:,.0f} → {high:,.0f}/s) {verdict}.")
    return table


def client_scaling(server: servers.BenchServer, n: int, plan: Plan) -> list[tuple[int, Sample]]:
    """New connections/s against the floor with N, 2N and 4N client processes (median of 3 interleaved rounds)."""
    counts = (n, 2 * n, 4 * n)
    runs: dict[int, list[Sample]] = {p: [] for p in counts}
    for round_ in range(3):
        for processes in counts if round_ % 2 == 0 else counts[::-1]:
            runs[processes].append(measure(server, "connect", processes, plan.duration))
    return [(p, min(runs[p], key=lambda s: abs(s.rate - median([r.rate for r in runs[p]])))) for p in counts]
