"""HTTP: wrk against one hello-world WSGI app under prefork --wsgi, gunicorn sync and gunicorn gthread.

    python bench/http_bench.py [--duration S] [--rounds N] [--connections C] [--workers W]

All three servers run at once on their own ports, with the same number of
workers (default: the CPU count); each round runs wrk against each of them in
turn, in a rotated order, so that whatever else the machine is doing weighs on
all three alike. Reported: the median requests/s over the rounds, its ratio to
each gunicorn worker type, p99 latency and every wrk error (socket errors and
non-2xx answers). Results go to ``bench/results/http.md``.

``run(duration, rounds)`` is what ``python -m bench`` calls (bench/http_section.py).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "http.md"
APP = "bench.http_bench:hello"
GTHREAD_THREADS = 4
DEFAULT_CONNECTIONS = 32


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The benchmarked application: the same for every server."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!\n"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def commands(workers: int, ports: list[int]) -> list[tuple[str, list[str]]]:
    """(label, argv) of each server under test, each on its own port."""
    bind = "127.0.0.1:{}"
    gunicorn = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--log-level", "warning"]
    return [
        ("prefork --wsgi", [sys.executable, "-m", "prefork", "run", "--wsgi", "--workers", str(workers),
                            "--log-level", "warning", "--bind", bind.format(ports[0]), APP]),
        ("gunicorn sync", [*gunicorn, "--bind", bind.format(ports[1]), APP]),
        (f"gunicorn gthread ({GTHREAD_THREADS} threads)",
         [*gunicorn, "--worker-class", "gthread", "--threads", str(GTHREAD_THREADS),
          "--bind", bind.format(ports[2]), APP]),
    ]


class Server:
    """One server's process group, started in its own session and killed whole."""

    def __init__(self, label: str, argv: list[str]) -> None:
        self.label = label
        self.argv = argv
        self.port = int(argv[argv.index("--bind") + 1].rpartition(":")[2])
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/")
                if conn.getresponse().read() == b"Hello, world!\n":
                    return
            time.sleep(0.05)
        self.log.seek(0)
        raise RuntimeError(f"{self.label} did not start: {self.log.read().decode(errors='replace')[-2000:]}")

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
    """Requests/s, p99 latency (ms) and the error count from wrk --latency output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)] if p99 else float("nan"),
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def wrk(port: int, duration: float, connections: int, threads: int) -> dict[str, float]:
    argv = ["wrk", "--latency", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
            f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    return parse_wrk(out.stdout)


def measure(duration: float, rounds: int, connections: int, workers: int) -> dict[str, list[dict[str, float]]]:
    """Every round's wrk figures per server label."""
    servers = [Server(label, argv) for label, argv in commands(workers, [free_port() for _ in range(3)])]
    runs: dict[str, list[dict[str, float]]] = {server.label: [] for server in servers}
    threads = min(connections, os.cpu_count() or 1)
    try:
        for server in servers:
            server.wait_ready()
            if duration >= 2:  # warm up (first connections, lazy imports); a smoke run has no time for it
                wrk(server.port, 1, connections, threads)
        for number in range(rounds):
            shift = number % len(servers)
            for server in servers[shift:] + servers[:shift]:
                runs[server.label].append(wrk(server.port, duration, connections, threads))
    finally:
        for server in servers:
            server.stop()
    return runs


def summarize(runs: dict[str, list[dict[str, float]]], connections: int, workers: int) -> list[dict[str, Any]]:
    """One row per server: medians, ratios to both gunicorn workers, errors."""
    medians = {label: statistics.median(r["rps"] for r in rounds) for label, rounds in runs.items()}
    sync, gthread = (medians[label] for label in list(runs)[1:3])
    rows = []
    for label, rounds in runs.items():
        rps = medians[label]
        rows.append({
            "server": label,
            "workers": workers,
            "connections": connections,
            "req/s (median)": round(rps),
            "req/s per round": " / ".join(str(round(r["rps"])) for r in rounds),
            "vs gunicorn sync": f"{rps / sync:.2f}x" if sync else "-",
            "vs gunicorn gthread": f"{rps / gthread:.2f}x" if gthread else "-",
            "p99 ms (median)": round(statistics.median(r["p99_ms"] for r in rounds), 2),
            "errors": int(sum(r["errors"] for r in rounds)),
        })
    return rows


def run(duration: float, rounds: int, connections: int = DEFAULT_CONNECTIONS,
        workers: int | None = None) -> list[dict[str, Any]]:
    """Measure and summarize (called by ``python -m bench`` with its plan's duration and rounds)."""
    workers = workers or os.cpu_count() or 1
    return summarize(measure(duration, rounds, connections, workers), connections, workers)


def markdown(rows: list[dict[str, Any]], command: str, duration: float, rounds: int) -> str:
    columns = list(rows[0])
    connections = rows[0]["connections"]
    threads = min(connections, os.cpu_count() or 1)
    lines = [
        "# HTTP: prefork --wsgi vs gunicorn (wrk, hello world)", "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; wrk -t{threads} -c{connections}, "
        f"{rounds} rounds of {duration:g} s per server, interleaved.", "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of wrk per server and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = run(args.duration, args.rounds, args.connections, args.workers)
    command = "python bench/http_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(rows, command.strip(), args.duration, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    sys.stdout.write(text)
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
