"""Startup: from the command to the first HTTP answer, prefork --wsgi beside gunicorn; and `prefork --version`.

Both servers run the same WSGI hello app (``bench.wsgi_apps:hello``) with one
worker, started alternately (prefork, gunicorn, gunicorn, prefork, ...) so that
the machine's load falls on both alike; the figure is the median time from
``Popen`` to the first complete ``200`` answer. Goal: prefork at most 0.7x
gunicorn. ``prefork --version`` is timed beside the bare interpreter
(goal: under 80 ms).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

from .http_bench import HELLO as APP
from .http_bench import free_port
from .plan import Plan
from .report import Section, Table, median, ratio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_VS_GUNICORN = 0.7
VERSION_GOAL_MS = 80.0


def run(plan: Plan) -> Section:
    trials = 2 if plan.smoke else 9
    section = Section("Startup")
    absent = [name for name in ("gunicorn", "httptools") if importlib.util.find_spec(name) is None]
    if absent:  # the peer and the HTTP parser come with the bench extra, not with the test extra
        section.skipped = "needs " + ", ".join(absent) + " (pip install '.[bench]')"
        return section
    samples: dict[str, list[float]] = {"prefork": [], "gunicorn": []}
    for trial in range(trials):
        order = ["prefork", "gunicorn"] if trial % 2 == 0 else ["gunicorn", "prefork"]  # ABBA
        for name in order:
            samples[name].append(first_answer_ms(server_argv(name, free_port())))
    table = Table("Startup to the first HTTP answer (1 worker, WSGI hello, ms)",
                  ["", "prefork run --wsgi -w 1", "gunicorn -w 1", "prefork / gunicorn", "goal"], summary=True)
    pf, gu = median(samples["prefork"]), median(samples["gunicorn"])
    table.add(f"median of {trials}", pf, gu, ratio(pf, gu), f"<= {GOAL_VS_GUNICORN}")
    table.add("min", min(samples["prefork"]), min(samples["gunicorn"]), ratio(min(samples["prefork"]),
              min(samples["gunicorn"])), "")
    table.notes.append("From Popen to the first complete 200 answer on a fresh connection, polled every 2 ms; "
                       "prefork and gunicorn alternate so that load falls on both.")
    version = Table("`prefork --version` (ms)", ["", "prefork --version", "python -c pass", "goal"], summary=True)
    runs = 3 if plan.smoke else 15
    pv = [command_ms([sys.executable, "-m", "prefork", "--version"]) for _ in range(runs)]
    bare = [command_ms([sys.executable, "-c", "pass"]) for _ in range(runs)]
    version.add(f"median of {runs}", median(pv), median(bare), f"< {VERSION_GOAL_MS:g}")
    version.add("min", min(pv), min(bare), "")
    section.tables += [table, version]
    return section


def server_argv(name: str, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    if name == "prefork":
        return [sys.executable, "-m", "prefork", "run", "--wsgi", "--workers", "1", "--log-level", "warning",
                "--bind", bind, APP]
    return [sys.executable, "-m", "gunicorn", "-w", "1", "--log-level", "warning", "--bind", bind, APP]


def first_answer_ms(argv: list[str], timeout: float = 30.0) -> float:
    """Milliseconds from starting ``argv`` to its first HTTP 200 answer; the server is killed after."""
    port = int(argv[argv.index("--bind") + 1].rsplit(":", 1)[1])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if answered(port):
                return 1000 * (time.perf_counter() - started)
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[2]} exited with {proc.returncode} before answering")
            time.sleep(0.002)
        raise TimeoutError(f"{' '.join(argv)}: no answer within {timeout}s")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def answered(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            return data.startswith(b"HTTP/1.1 200") and b"Hello, world!\n" in data  # chunked or not
    except OSError:
        return False


def command_ms(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
    return 1000 * (time.perf_counter() - started)
