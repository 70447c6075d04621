"""``prefork reload|stop|scale``: each sends its signal and returns once the change has happened."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Server, wait_for
from control_helpers import prefork, snapshot, status_json

from prefork.client import parse_scale
from prefork.endpoint import MAX_CONNECTIONS, Endpoint
from prefork.errors import UsageError
from prefork.pidfile import read_pid


def test_parse_scale() -> None:
    assert parse_scale("5") == (5, False)
    assert parse_scale("+3") == (3, True)
    assert parse_scale("-1") == (-1, True)
    for bad in ("0", "4097", "many", "", "3.5", "++1"):
        with pytest.raises(UsageError):  # status 2, found before the master is contacted
            parse_scale(bad)


def start(server: Server, tmp_path: Path, *args: str, app: str = "testapps:pid", workers: int = 2) -> Path:
    pidfile = tmp_path / "prefork.pid"
    server.start("--pid", str(pidfile), *args, app=app, workers=workers).wait_ready(workers)
    return pidfile


def test_reload_returns_when_the_new_generation_serves(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path)
    old = server.worker_pids()
    result = prefork("reload", "--pid", str(pidfile))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reloaded: generation 2 serving with 2 workers"
    report = status_json(pidfile)
    assert report["master"]["generation"] == 2 and report["stats"]["reloads"] == 1
    serving = {w["pid"] for w in report["workers"] if w["generation"] == 2}
    assert len(serving) == 2 and not serving & old
    assert server.ask_pid() in serving


def test_failed_reload_is_an_error(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "prefork.toml"
    config.write_text("workers = 2\n")
    pidfile = start(server, tmp_path, "--config", str(config))
    config.write_text("workers = 'many'\n")
    result = prefork("reload", "--pid", str(pidfile))
    assert result.returncode == 6
    assert result.stderr.startswith("Error: reload failed:") and "workers" in result.stderr
    report = status_json(pidfile)
    assert report["master"]["generation"] == 1 and report["stats"]["reload_failures"] == 1


def test_stop_fast_waits_for_the_master(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path)
    result = prefork("stop", "--fast", "--pid", str(pidfile))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"stopped: master {server.pid} exited (fast stop)"
    assert server.wait_exit(10) == 0 and not pidfile.exists()


def test_stop_graceful_lets_a_busy_connection_finish(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path, app="testapps:slow")
    answers: list[bytes] = []
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"2")
        wait_busy(pidfile)
        reader = threading.Thread(target=lambda: answers.append(sock.recv(100)))
        reader.start()
        result = prefork("stop", "--graceful", "--pid", str(pidfile))
        reader.join(30)
    assert result.returncode == 0, result.stderr
    assert "graceful stop" in result.stdout
    assert answers and answers[0].strip().isdigit()


def wait_busy(pidfile: Path) -> None:
    wait_for(lambda: any(w["state"] == "busy" for w in snapshot(pidfile)["workers"]), 30, what="a busy worker")


def test_scale_to_n_and_by_n(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path)
    steps = [("4", "scaled: 2 -> 4 workers", 4), ("-3", "scaled: 4 -> 1 workers", 1),
             ("+1", "scaled: 1 -> 2 workers", 2)]
    for spec, message, count in steps:
        result = prefork("scale", spec, "--pid", str(pidfile))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == message
        # "Done" means done: exactly that many workers, every one booted, none left stopping.
        assert len(server.worker_pids()) == count
        report = status_json(pidfile)
        assert [w["state"] for w in report["workers"]] == ["idle"] * count
    result = prefork("scale", "-2", "--pid", str(pidfile))  # a usage error (2), not a failed change (6)
    assert result.returncode == 2 and "cannot scale from 2 to 0 workers (expected 1 to 4096)" in result.stderr
    assert len(server.worker_pids()) == 2


@pytest.mark.parametrize("command", [["reload"], ["stop"], ["stop", "--graceful"], ["scale", "3"]])
def test_commands_refuse_a_stale_pid_file(tmp_path: Path, command: list[str]) -> None:
    pidfile = tmp_path / "prefork.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # alive, but the pytest process is no prefork master
    result = prefork(*command, "--pid", str(pidfile))
    assert result.returncode == 5
    assert "stale pid file" in result.stderr and "not a prefork master" in result.stderr


def test_status_follows_a_binary_upgrade(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path)
    server.signal(signal.SIGUSR2)
    wait_for(lambda: server.proc is not None and server.proc.poll() is not None, 30, what="the old master to retire")
    new_master = read_pid(pidfile)
    assert new_master is not None and new_master != server.pid
    try:
        # The old master's exit left the new master's control socket in place.
        wait_for(lambda: snapshot(pidfile)["workers"], 30, what="the new master's workers")
        report = status_json(pidfile)
        assert report["master"]["pid"] == new_master
    finally:
        os.kill(new_master, signal.SIGKILL)


def test_status_survives_a_failed_upgrade(server: Server, tmp_path: Path) -> None:
    app = tmp_path / "deploy.py"
    app.write_text("import os\ndef handler(conn, addr):\n    conn.sendall(b'%d' % os.getpid())\n")
    pidfile = start(server, tmp_path, "--chdir", str(tmp_path), app="deploy:handler")
    app.write_text("raise ImportError('bad release')\n")
    server.signal(signal.SIGUSR2)
    wait_for(lambda: "upgrade failed" in server.log(), 30, what="the upgrade to fail")
    assert status_json(pidfile)["master"]["pid"] == server.pid


# --- the endpoint under the control socket and /metrics: a real selector loop, in-process ---


def run_endpoint(answer: bytes, clients: Callable[[str], None], tmp_path: Path) -> int:
    """Serve ``answer`` from a selector loop (as the master does) while ``clients`` run; connections left."""
    path = str(tmp_path / "endpoint.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(64)
    selector = selectors.DefaultSelector()
    endpoint = Endpoint(listening, "test", selector, lambda request: answer, b"\n")
    done = threading.Event()
    errors: list[BaseException] = []

    def client_side() -> None:
        try:
            clients(path)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=client_side)
    thread.start()
    while not done.is_set():
        for key, _ in selector.select(0.05):
            key.data()
    thread.join()
    assert not errors, errors
    left = len(endpoint.connections)
    endpoint.close()
    selector.close()
    return left


def test_endpoint_writes_a_large_answer_as_the_client_reads(tmp_path: Path) -> None:
    answer = b"x" * (8 * 2**20)  # far beyond a socket buffer: written over many wake-ups
    received: list[bytes] = []

    def client(path: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(path)
            sock.sendall(b"status\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
            received.append(b"".join(chunks))

    assert run_endpoint(answer, client, tmp_path) == 0
    assert received == [answer]


def test_endpoint_drops_the_oldest_of_too_many_silent_clients(tmp_path: Path) -> None:
    outcome: list[bytes] = []

    def clients(path: str) -> None:
        silent = []
        for _ in range(MAX_CONNECTIONS + 1):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(path)
            silent.append(sock)
        outcome.append(silent[0].recv(10))  # closed by the endpoint: EOF
        silent[-1].sendall(b"status\n")
        outcome.append(silent[-1].recv(10))  # the newest is still answered
        for sock in silent:
            sock.close()

    run_endpoint(b"ok\n", clients, tmp_path)
    assert outcome == [b"", b"ok\n"]
