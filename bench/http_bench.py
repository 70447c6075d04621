"""HTTP: wrk against the same WSGI apps under prefork --wsgi, gunicorn, granian and uWSGI.

    python bench/http_bench.py [--duration S] [--rounds N] [--workers W] [--only LOADS]

Every server runs at once on its own port with the same number of workers
(default 2). Each round runs every load against every server in turn, in a
rotated order, so that whatever else the machine does weighs on all alike.
The loads:

- ``c50``, ``c8``: wrk -c50 (saturating) and -c8 on the hello app;
- ``mixed``: wrk -c45 on the hello path and, at the same time, wrk -c5 on a
  path whose app sleeps 50 ms: the p99 latency of the fast requests shows
  whether quick requests wait behind slow ones;
- ``flask``: wrk -c50 on a small Flask JSON endpoint (bench/flask_app.py).

Reported per load and server: the median requests/s over the rounds, its ratio
to gunicorn sync's and granian's, the server's CPU time per request (user +
system of its whole process tree, from psutil, over the wrk run), the median
p99 latency and every wrk error (socket errors and non-2xx answers). A server
that is not installed (uWSGI is the ``pyuwsgi`` wheel) is left out and named.
Results go to ``bench/results/http.md``, with the load average before and after.

``run(duration, rounds)`` is what ``python -m bench`` calls (bench/http_section.py).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "http.md"
HELLO = "bench.wsgi_apps:hello"
FLASK = "bench.flask_app:app"
THREADS = 4
WORKERS = 2
LOADS = ("c50", "c8", "mixed", "flask")
BASELINE = "gunicorn sync"
DOUBLED = "prefork --workers {} --wsgi"  # run only when --servers names it
RUST = "granian"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def commands(workers: int, app: str) -> list[tuple[str, Callable[[int], list[str]]]]:
    """(label, argv for a port) of each server under test that this machine has."""
    w = str(workers)
    python = sys.executable
    gunicorn = [python, "-m", "gunicorn", "--workers", w, "--log-level", "warning"]
    servers: list[tuple[str, Callable[[int], list[str]]]] = [
        ("prefork --wsgi", lambda port: [python, "-m", "prefork", "run", "--wsgi", "--workers", w,
                                         "--log-level", "warning", "--bind", f"127.0.0.1:{port}", app]),
        (f"prefork --wsgi --threads {THREADS}",
         lambda port: [python, "-m", "prefork", "run", "--wsgi", "--workers", w, "--threads", str(THREADS),
                       "--log-level", "warning", "--bind", f"127.0.0.1:{port}", app]),
        (BASELINE, lambda port: [*gunicorn, "--bind", f"127.0.0.1:{port}", app]),
        (f"gunicorn gthread {THREADS}",
         lambda port: [*gunicorn, "--worker-class", "gthread", "--threads", str(THREADS),
                       "--bind", f"127.0.0.1:{port}", app]),
    ]
    # Not in the default set (only when --servers names it): as many single-threaded processes as granian
    # runs busy threads (each granian worker runs Python in one thread and its I/O in another).
    servers.append((DOUBLED.format(2 * workers), lambda port: [
        python, "-m", "prefork", "run", "--workers", str(2 * workers), "--wsgi", "--log-level", "warning",
        "--bind", f"127.0.0.1:{port}", app]))
    if installed("granian"):
        servers.append((RUST, lambda port: [python, "-m", "granian", "--interface", "wsgi", "--workers", w,
                                            "--host", "127.0.0.1", "--port", str(port), "--no-ws",
                                            "--log-level", "warning", app]))
    if installed("pyuwsgi"):
        servers.append(("uWSGI (pyuwsgi)", lambda port: [
            python, "-c", "import sys, pyuwsgi; sys.exit(pyuwsgi.run())", "--http11-socket", f"127.0.0.1:{port}",
            "--master", "--workers", w, "--module", app, "--disable-logging", "--die-on-term", "--need-app",
            "--lazy-apps"]))
    return servers


def missing_servers() -> list[str]:
    return [name for name, module in (("granian", "granian"), ("uWSGI", "pyuwsgi")) if not installed(module)]


class Server:
    """One server's process group, started in its own session and killed whole."""

    def __init__(self, label: str, argv: list[str], port: int) -> None:
        self.label = label
        self.argv = argv
        self.port = port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFORK_", "GRANIAN_", "UWSGI_"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=self.log,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/")
                response = conn.getresponse()
                if response.status == 200 and response.read():
                    return
            time.sleep(0.05)
        self.log.seek(0)
        raise RuntimeError(f"{self.label} did not start: {self.log.read().decode(errors='replace')[-2000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process tree (workers' threads included)."""
        total = 0.0
        try:
            processes = [psutil.Process(self.proc.pid)]
            processes += processes[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return total
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a worker left behind
        self.log.close()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, requests, p99 latency (ms) and the error count from wrk --latency output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": float(total.group(1)) if total else 0.0,
        "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)] if p99 else float("nan"),
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def wrk_argv(port: int, duration: float, connections: int, threads: int, path: str = "/") -> list[str]:
    return ["wrk", "--latency", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
            f"http://127.0.0.1:{port}{path}"]


def wrk(port: int, duration: float, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(wrk_argv(port, duration, connections, threads), capture_output=True, text=True,
                         timeout=duration + 60)
    return parse_wrk(out.stdout)


def mixed(port: int, duration: float) -> dict[str, float]:
    """wrk -c45 on the fast path and wrk -c5 on the 50 ms path at once: the fast requests' figures."""
    slow = subprocess.Popen(wrk_argv(port, duration, 5, 1, "/slow"), stdout=subprocess.PIPE, text=True)
    fast = subprocess.run(wrk_argv(port, duration, 45, 1), capture_output=True, text=True, timeout=duration + 60)
    slow_out, _ = slow.communicate(timeout=duration + 60)
    figures = parse_wrk(fast.stdout)
    slow_figures = parse_wrk(slow_out)
    figures["slow_rps"] = slow_figures["rps"]
    figures["requests"] += slow_figures["requests"]
    figures["errors"] += slow_figures["errors"]
    return figures


@dataclass
class Load:
    name: str
    app: str
    run: Callable[[int, float], dict[str, float]]
    servers: list[Server] = field(default_factory=list)


def loads(only: tuple[str, ...]) -> list[Load]:
    threads = min(2, os.cpu_count() or 1)
    table = {
        "c50": Load("c50", HELLO, lambda port, d: wrk(port, d, 50, threads)),
        "c8": Load("c8", HELLO, lambda port, d: wrk(port, d, 8, threads)),
        "mixed": Load("mixed", HELLO, mixed),
        "flask": Load("flask", FLASK, lambda port, d: wrk(port, d, 50, threads)),
    }
    if not installed("flask"):
        only = tuple(name for name in only if name != "flask")
    return [table[name] for name in only]


def is_picked(label: str, picked: tuple[str, ...], workers: int) -> bool:
    """Whether --servers asks for this server (all but the doubled-workers row when it names none)."""
    if picked:
        return label.startswith(picked)
    return label != DOUBLED.format(2 * workers)


def measured(server: Server, load: Load, duration: float) -> dict[str, float]:
    before, started = server.cpu_seconds(), time.monotonic()
    figures = load.run(server.port, duration)
    spent = server.cpu_seconds() - before
    figures["cpu_us"] = spent * 1e6 / figures["requests"] if figures["requests"] else 0.0
    figures["cores"] = spent / (time.monotonic() - started)  # the CPU the server got from a shared machine
    return figures


def measure(duration: float, rounds: int, workers: int, only: tuple[str, ...] = LOADS,
            picked: tuple[str, ...] = ()) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Every round's figures, per load and server label; one set of servers per application.

    ``picked``: only the servers whose label starts with one of these (all when empty).
    """
    chosen = loads(only)
    servers: dict[str, list[Server]] = {}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for load in chosen:
            if load.app not in servers:
                servers[load.app] = [Server(label, argv(port), port)
                                     for label, argv in commands(workers, load.app) for port in [free_port()]
                                     if is_picked(label, picked, workers)]
            load.servers = servers[load.app]
            runs[load.name] = {server.label: [] for server in load.servers}
        for group in servers.values():
            for server in group:
                server.wait_ready()
                if duration >= 2:  # warm up (first connections, lazy imports); a smoke run has no time for it
                    wrk(server.port, 1, 50, 2)
        for number in range(rounds):
            for load in chosen:
                shift = number % len(load.servers)
                for server in load.servers[shift:] + load.servers[:shift]:
                    runs[load.name][server.label].append(measured(server, load, duration))
    finally:
        for group in servers.values():
            for server in group:
                server.stop()
    return runs


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def summarize(runs: dict[str, dict[str, list[dict[str, float]]]], workers: int) -> list[dict[str, Any]]:
    """One row per load and server: medians, ratios to gunicorn sync and granian, CPU per request, errors."""
    rows = []
    for load, by_server in runs.items():
        medians = {label: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
                   for label, rounds in by_server.items()}
        base, rust = medians.get(BASELINE), medians.get(RUST)
        for label, rounds in by_server.items():
            m = medians[label]
            row: dict[str, Any] = {
                "load": load, "server": label, "workers": workers,
                "req/s (median)": round(m["rps"]),
                "req/s per round": " / ".join(str(round(r["rps"])) for r in rounds),
                "vs gunicorn sync": ratio(m["rps"], base["rps"] if base else None),
                "vs granian": ratio(m["rps"], rust["rps"] if rust else None),
                "CPU µs/req": round(m["cpu_us"], 1),
                "CPU vs granian": ratio(m["cpu_us"], rust["cpu_us"] if rust else None),
                "cores used": round(m["cores"], 2),
                "p99 ms": round(m["p99_ms"], 2),
                "p99 vs gunicorn sync": ratio(m["p99_ms"], base["p99_ms"] if base else None),
                "errors": int(sum(r["errors"] for r in rounds)),
            }
            if load == "mixed":
                row["slow req/s"] = round(m["slow_rps"])
            rows.append(row)
    return rows


def run(duration: float, rounds: int, workers: int = WORKERS, only: tuple[str, ...] = LOADS,
        picked: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Measure and summarize (called by ``python -m bench`` with its plan's duration and rounds)."""
    return summarize(measure(duration, rounds, workers, only, picked), workers)


TITLES = {
    "c50": "hello world, wrk -t2 -c50 (saturating)",
    "c8": "hello world, wrk -t2 -c8",
    "mixed": "mixed load: wrk -t1 -c45 on / and wrk -t1 -c5 on /slow (50 ms) at once; figures of the fast requests",
    "flask": "Flask JSON endpoint, wrk -t2 -c50",
}


def markdown(rows: list[dict[str, Any]], command: str, duration: float, rounds: int,
             load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    lines = [
        "# HTTP: prefork --wsgi vs gunicorn, granian, uWSGI (wrk)", "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {rows[0]['workers']} workers per server; "
        f"{rounds} rounds of {duration:g} s per server and load, interleaved; load average "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in load_after)} after.",
        "CPU µs/req: user + system time of the server's process tree over the run, per request; cores used: that "
        "time over the run's length (what the server got of the shared CPUs).",
    ]
    if missing_servers():
        lines.append("Not installed here, left out: " + ", ".join(missing_servers()) + ".")
    for load in dict.fromkeys(row["load"] for row in rows):
        group = [row for row in rows if row["load"] == load]
        columns = [column for column in group[0] if column not in ("load", "workers")]
        lines += ["", f"## {TITLES.get(load, load)}", "",
                  "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in group]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of wrk per server, load and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--only", default=",".join(LOADS), help="loads to run, comma-separated: " + ", ".join(LOADS))
    parser.add_argument("--servers", default="", help="only the servers whose label starts with one of these, "
                        "comma-separated (e.g. 'prefork --wsgi,gunicorn sync,granian')")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.stderr.write("http_bench: wrk is not installed\n")
        return 2
    only = tuple(name for name in args.only.split(",") if name)
    unknown = [name for name in only if name not in LOADS]
    if unknown:
        sys.stderr.write(f"http_bench: unknown load {unknown[0]!r} (known: {', '.join(LOADS)})\n")
        return 2
    load_before = os.getloadavg()
    picked = tuple(name for name in args.servers.split(",") if name)
    rows = run(args.duration, args.rounds, args.workers, only, picked)
    load_after = os.getloadavg()
    command = "python bench/http_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(rows, command.strip(), args.duration, args.rounds, load_before, load_after)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    sys.stdout.write(text)
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
