"""The Python of a kept-alive request, measured in one process: a worker's epoll loop and HTTP path.

    python -m bench.http_loop [--app bench.wsgi_apps:hello] [--clients 10] [--requests 150000] [--profile]

A real :class:`prefork.keepalive.KeptLoop` (with a real listener, scoreboard
slot and WSGI handler) serves ``--clients`` kept-alive TCP connections whose
client ends are in this same process: each round, every client sends a
request, the loop turns until all are answered, every client reads its answer.
Only the loop's turns are timed (their system calls included, the clients' not),
and the best of 15 blocks is kept, so other processes on the machine weigh
little. The kernel's share of a real load (waking the client) is not in it: a
server under wrk spends about as much again in the kernel.

``--profile`` adds a cProfile table of the same loop. Run it from two trees
(``PYTHONPATH=tree``) to compare their code per request.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pstats
import socket
import sys
import time
from typing import Any

from prefork.http.handler import WSGIHandler
from prefork.keepalive import KeptLoop
from prefork.log import Log
from prefork.scoreboard import Scoreboard, Slot
from prefork.settings import Settings
from prefork.sockets import Listener, parse_address
from prefork.worker import Worker, WorkerSpec

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"  # what wrk sends
BLOCKS = 15


class Bench:
    """One worker's loop and its clients, all in this process."""

    def __init__(self, app: Any, clients: int) -> None:
        settings = Settings(wsgi=True)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(clients)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        listener = Listener(sock, parse_address(f"127.0.0.1:{port}"), "bench")
        board = Scoreboard(1)
        number = board.allocate(0, 0, 1) or 0
        spec = WorkerSpec(settings, (listener,), board, number, 0, 1, os.getppid(), -1, Log("warning", None),
                          None, (), ())
        worker = Worker(spec)
        worker.pid = os.getpid()
        self.slot: Slot = worker.slot
        self.loop = KeptLoop(worker, WSGIHandler(app, settings).bind_worker(worker))
        self.clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]

    def rounds(self, count: int) -> float:
        """Seconds the loop spent answering ``count`` rounds of one request per client."""
        spent = 0.0
        for _ in range(count):
            for client in self.clients:
                client.sendall(REQUEST)
            goal = self.slot.requests + len(self.clients)
            began = time.perf_counter()
            while self.slot.requests < goal:
                self.loop.turn()
            spent += time.perf_counter() - began
            for client in self.clients:
                client.recv(65536)
        return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--app", default="bench.wsgi_apps:hello")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=150_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    module, _, attribute = args.app.partition(":")
    bench = Bench(getattr(importlib.import_module(module), attribute), args.clients)
    per_block = max(1, args.requests // BLOCKS // args.clients)
    bench.rounds(per_block)  # warm up: first connections, lazy imports
    best = min(bench.rounds(per_block) for _ in range(BLOCKS))
    sys.stdout.write(f"{best * 1e6 / (per_block * args.clients):.2f} µs per request in the loop's turns "
                     f"({args.app}, {args.clients} clients, best of {BLOCKS} blocks of {per_block} rounds)\n")
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        bench.rounds(per_block)
        profile.disable()
        pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
