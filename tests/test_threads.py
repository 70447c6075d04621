"""``--threads N``: one worker serves N connections at once; stops wait for every busy thread."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

from conftest import Server, free_port, request, wait_for
from control_helpers import prefork, snapshot, status_json


def start(server: Server, tmp_path: Path, *args: str, threads: int = 4, workers: int = 1) -> Path:
    pidfile = tmp_path / "prefork.pid"
    server.start("--pid", str(pidfile), "--threads", str(threads), *args,
                 app="testapps:slow", workers=workers).wait_ready(workers)
    return pidfile


def worker_report(pidfile: Path) -> dict[str, Any]:
    (worker,) = snapshot(pidfile)["workers"]
    return worker


def hold(server: Server, seconds: str, count: int) -> tuple[list[socket.socket], list[bytes], list[threading.Thread]]:
    """Open ``count`` slow connections; their answers land in the returned list as they come."""
    socks = [socket.create_connection(server.address) for _ in range(count)]
    answers: list[bytes] = []
    readers = []
    for sock in socks:
        sock.settimeout(60)
        sock.sendall(seconds.encode())
        reader = threading.Thread(target=lambda s=sock: answers.append(s.recv(100)))
        reader.start()
        readers.append(reader)
    return socks, answers, readers


def test_one_worker_serves_n_slow_connections_in_parallel(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path, threads=4)
    (worker_pid,) = server.worker_pids()
    socks, answers, readers = hold(server, "3", 4)
    try:
        # All four are being served at the same moment, by one process.
        busy = wait_for(lambda: (w := worker_report(pidfile))["busy_threads"] == 4 and w, 30,
                        what="4 busy threads in the one worker")
        assert busy["state"] == "busy" and busy["threads"] == 4 and busy["pid"] == worker_pid
        assert status_json(pidfile)["workers"][0]["busy_threads"] == 4  # as `prefork status` shows it
        for reader in readers:
            reader.join(60)
        assert sorted(answers) == [f"{worker_pid}\n".encode()] * 4
        wait_for(lambda: worker_report(pidfile)["requests"] == 4, 30, what="4 connections counted")
        assert worker_report(pidfile)["state"] == "idle"
    finally:
        for sock in socks:
            sock.close()


def test_graceful_stop_waits_for_every_busy_thread(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path, threads=3)
    socks, answers, readers = hold(server, "2", 2)
    try:
        wait_for(lambda: worker_report(pidfile)["busy_threads"] == 2, 30, what="2 busy threads")
        server.signal(signal.SIGTERM)
        assert server.wait_exit(60) == 0
        for reader in readers:
            reader.join(30)
        assert len(answers) == 2 and all(answer.strip().isdigit() for answer in answers)
    finally:
        for sock in socks:
            sock.close()


def test_idle_threaded_workers_stop_at_once_and_quit_is_immediate(server_factory: Any, tmp_path: Path) -> None:
    idle = server_factory()
    idle.start("--threads", "4", app="testapps:pid", workers=2).wait_ready(2)
    assert idle.ask_pid() in idle.worker_pids()
    idle.signal(signal.SIGTERM)
    assert idle.wait_exit(30) == 0
    busy = server_factory()
    pidfile = tmp_path / "busy.pid"
    busy.start("--pid", str(pidfile), "--threads", "2", app="testapps:slow", workers=1).wait_ready(1)
    socks, _, readers = hold(busy, "600", 2)
    try:
        wait_for(lambda: worker_report(pidfile)["busy_threads"] == 2, 30, what="2 busy threads")
        busy.signal(signal.SIGQUIT)
        assert busy.wait_exit(30) == 0
    finally:
        for sock in socks:
            sock.close()
        for reader in readers:
            reader.join(30)


def test_threads_with_several_listeners(server: Server, tmp_path: Path) -> None:
    second = free_port()
    server.start("--threads", "2", "--bind", f"127.0.0.1:{second}", app="testapps:pid", workers=2).wait_ready(2)
    pids = server.worker_pids()
    for _ in range(3):
        assert server.ask_pid() in pids
        assert int(request(("127.0.0.1", second))) in pids


def test_reload_changing_threads_under_load_drops_nothing(server: Server, tmp_path: Path) -> None:
    """Threaded workers need O_NONBLOCK on listeners shared with single-threaded ones, both ways."""
    config = tmp_path / "prefork.toml"
    config.write_text("threads = 1\n")
    pidfile = tmp_path / "prefork.pid"
    server.start("--pid", str(pidfile), "--config", str(config), app="testapps:pid", workers=2).wait_ready(2)
    failures: list[BaseException] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                assert server.ask(timeout=30).strip().isdigit()
                answered[0] += 1
            except BaseException as exc:  # collected and reported below
                failures.append(exc)

    clients = [threading.Thread(target=load) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        for threads in (3, 1, 3):
            config.write_text(f"threads = {threads}\n")
            result = prefork("reload", "--pid", str(pidfile))
            assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        for client in clients:
            client.join(60)
    assert not failures, failures[:3]
    assert answered[0] > 0
    assert "worker failed" not in server.log() and "died" not in server.log()
