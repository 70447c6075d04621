"""Graceful stop under sustained load: prefork --wsgi beside gunicorn sync, on the same load.

8 client threads keep asking (one connection per request, ``Connection: close``) a
WSGI app that sleeps 0.3 s, served by 2 workers; TERM goes to the master while they
do, and they go on until it has exited. Measured: the time from TERM to the master's
exit, and every attempt that was not served, by kind:

- ``refused`` / ``connect timeout``: not accepted (the contract allows it);
- ``reset``, ``eof``, ``no answer``: the server accepted the connection, then dropped it.

The servers alternate (prefork, gunicorn, gunicorn, prefork, ...); figures are medians.

    python -m bench.stop [--rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from .plan import Plan
from .report import Section, Table, median

ROOT = Path(__file__).resolve().parent.parent
APP = "bench.apps:slow_wsgi"
CLIENTS, WORKERS, HANDLER_SECONDS = 8, 2, 0.3
CONNECT_TIMEOUT, ANSWER_TIMEOUT = 3.0, 30.0
DROPS = ("reset", "eof", "no answer")
KINDS = ("refused", "connect timeout", *DROPS)


def commands(port: int) -> dict[str, list[str]]:
    bind = f"127.0.0.1:{port}"
    return {
        "prefork --wsgi": [sys.executable, "-m", "prefork", "run", "--wsgi", "--workers", str(WORKERS),
                           "--bind", bind, APP],
        "gunicorn sync": [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--bind", bind, APP],
    }


def attempt(address: tuple[str, int]) -> str:
    """One request on a new connection: "served" or the kind of failure."""
    sock = socket.socket()
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(address)
    except ConnectionRefusedError:
        sock.close()
        return "refused"
    except TimeoutError:
        sock.close()
        return "connect timeout"
    with sock:
        sock.settimeout(ANSWER_TIMEOUT)
        answer = b""
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "no answer"
        except OSError:
            return "reset"
    return "served" if answer.startswith(b"HTTP/1.1 200") else "eof"


def one_stop(argv: list[str], port: int, sustain: float) -> tuple[float, Counter[str]]:
    """Start the server, load it, TERM it; (seconds from TERM to exit, outcomes after TERM)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
        try:
            return load_and_stop(proc, ("127.0.0.1", port), sustain)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def load_and_stop(proc: subprocess.Popen[bytes], address: tuple[str, int],
                  sustain: float) -> tuple[float, Counter[str]]:
    wait_served(address)
    outcomes: Counter[str] = Counter()
    lock, stopped, termed = threading.Lock(), threading.Event(), threading.Event()

    def client() -> None:
        while not stopped.is_set():
            outcome = attempt(address)
            if termed.is_set() or outcome != "served":  # every attempt that ended after TERM; any failure
                with lock:
                    outcomes[outcome] += 1
            if outcome in ("refused", "connect timeout"):
                time.sleep(0.01)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(sustain)  # sustained: every worker busy, the queue full
    termed.set()
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    took = time.monotonic() - started
    stopped.set()
    for thread in threads:
        thread.join(ANSWER_TIMEOUT + CONNECT_TIMEOUT + 5)
    return took, outcomes


def wait_served(address: tuple[str, int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while attempt(address) != "served":
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from {address} in {timeout}s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def section(plan: Plan) -> Section:
    """``python -m bench``'s section: as many rounds as the plan's (one, shorter, for --smoke)."""
    if importlib.util.find_spec("gunicorn") is None:
        return Section("Graceful stop", skipped="gunicorn is not installed")
    return run(1 if plan.smoke else max(2, plan.rounds // 2), sustain=0.5 if plan.smoke else 2.0)


def run(rounds: int, sustain: float = 2.0) -> Section:
    names = list(commands(0))
    took: dict[str, list[float]] = {name: [] for name in names}
    failures: dict[str, list[Counter[str]]] = {name: [] for name in names}
    for number in range(rounds):
        order = names if number % 2 == 0 else names[::-1]  # ABBA
        for name in order:
            port = free_port()
            seconds, outcomes = one_stop(commands(port)[name], port, sustain)
            took[name].append(seconds)
            failures[name].append(outcomes)
    table = Table(f"Graceful stop under sustained load ({CLIENTS} clients, {WORKERS} workers, "
                  f"{HANDLER_SECONDS:g} s handler; {rounds} rounds, medians)",
                  ["server", "TERM → exit, s", "served, ended after TERM", *KINDS, "accepted then dropped"],
                  summary=True)
    for name in names:
        kinds = [median([float(c[kind]) for c in failures[name]]) for kind in KINDS]
        dropped = median([float(sum(c[kind] for kind in DROPS)) for c in failures[name]])
        table.add(name, median(took[name]), median([float(c["served"]) for c in failures[name]]), *kinds, dropped)
    table.notes.append("Clients go on until the master has exited. refused / connect timeout: not accepted "
                       "(a client retries elsewhere); reset / eof / no answer: accepted, then dropped.")
    section = Section("Graceful stop")
    section.tables.append(table)
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stop", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    for table in run(args.rounds).tables:
        sys.stdout.write(table.markdown())


if __name__ == "__main__":
    main()
