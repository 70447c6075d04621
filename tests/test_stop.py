"""Stopping drops nothing and ends on time (issue 13): real servers under sustained load, real signals.

Every test keeps its clients going until the master has exited: the stop must end
on what was in flight or queued when it began, not when the load ends. Each
attempt is served or not accepted; none is accepted and then dropped
(``stop_helpers.py`` says how each is told). The bound on the master's exit is a
test timeout, not a performance figure (those are in bench/).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import ROOT, Server, free_port, request, wait_for
from control_helpers import prefork, snapshot
from http_helpers import start_http
from stop_helpers import NOT_ACCEPTED, SERVED, KeepAliveClient, StopLoad, ask_slow, assert_master_sleeps

from prefork import drain, worker_table
from prefork.view import Phase, Stop, phase

pytestmark = pytest.mark.timeout(120)

STOP_BOUND = 15.0  # seconds from TERM to the master's exit: what was queued, never the load that follows


# --- the pieces: the listener filter on real sockets, the phase ---


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_filter_stops_new_handshakes_and_keeps_the_queue(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen(8)
        address = listener.getsockname()[:2]
        queued_before = socket.create_connection(address)
        wait_for(lambda: drain.queued(listener) == 1, what="one connection queued")
        drain.refuse_handshakes(listener)
        late = socket.socket(family)
        late.settimeout(0.5)
        with pytest.raises(TimeoutError):  # the SYN went unanswered: not accepted, and nothing to drop
            late.connect(address)
        assert drain.queued(listener) == 1
        conn, _ = listener.accept()  # what was completed before stays acceptable
        queued_before.sendall(b"x")
        assert conn.recv(1) == b"x"  # and data segments (ACK set) still pass
        conn.close()
        queued_before.close()
        late.close()
    with socket.socket(family) as after, pytest.raises(ConnectionRefusedError):
        after.connect(address)  # closed: the next SYN is refused


def test_a_stopping_master_sleeps_with_a_memory_limit(server: Server) -> None:
    """A graceful stop ends the memory checks, and with them their deadline: the master sleeps until its workers
    leave (it used to wake at once, forever, from the first check it no longer made)."""
    server.start("--max-worker-memory", "1000", "--timeout", "0", app="testapps:echo", workers=1).wait_ready(1)
    with socket.create_connection(server.address, timeout=30) as held:
        held.sendall(b"ping")
        assert held.recv(10) == b"ping"  # served: its worker is busy until we close, the stop waits for it
        server.signal(signal.SIGTERM)
        wait_for(lambda: "graceful stop" in server.log(), 10, what="the graceful stop")
        time.sleep(worker_table.MEMORY_CHECK_INTERVAL + 0.5)  # past the check due next
        assert_master_sleeps(server.pid)
    assert server.wait_exit(30) == 0


def test_the_phase_is_derived_from_the_stop_and_the_delay() -> None:
    view = SimpleNamespace(stopping=None, shutdown_delay_ends=None)
    assert phase(view) is Phase.SERVING  # type: ignore[arg-type]
    view.shutdown_delay_ends = 100.0
    assert phase(view) is Phase.SHUTDOWN_DELAY  # type: ignore[arg-type]
    view.stopping = Stop.GRACEFUL
    assert phase(view) is Phase.DRAINING  # type: ignore[arg-type]
    view.stopping = Stop.FAST
    assert phase(view).label == "stopping fast"  # type: ignore[arg-type]


# --- the real server under load ---


def assert_nothing_dropped(load: StopLoad, server: Server) -> None:
    counts = load.attempts.counts
    assert counts[SERVED] > 0, counts
    drops = dict(load.attempts.drops)
    assert not drops, f"accepted, then dropped: {drops}; {dict(counts)}\n{server.log()}"


def stop_under_load(server: Server, addresses: list[Any], attempt: object, threads: int = 8) -> StopLoad:
    """TERM while ``threads`` clients keep coming; the master must exit 0 while they still come."""
    with StopLoad(addresses, threads, attempt) as load:  # type: ignore[arg-type]
        load.wait_served(10)
        server.signal(signal.SIGTERM)
        assert server.wait_exit(STOP_BOUND) == 0
        assert not load.stopped.is_set()  # the clients were still coming when the master exited
    return load


@pytest.mark.parametrize("options", [[], ["--threads", "2"], ["--reuse-port"], ["two binds"], ["ipv6 and unix"]],
                         ids=["plain", "threads", "reuse-port", "two-binds", "ipv6-and-unix"])
def test_term_under_sustained_load_serves_or_refuses(server: Server, options: list[str], tmp_path: Path) -> None:
    addresses: list[Any] = [server.address]
    if options == ["two binds"]:
        second = free_port()
        options = ["--bind", f"127.0.0.1:{second}"]
        addresses.append(("127.0.0.1", second))
    elif options == ["ipv6 and unix"]:
        if not socket.has_ipv6:
            pytest.skip("no IPv6")
        v6, path = free_port("::1"), str(tmp_path / "s.sock")
        options = ["--bind", f"[::1]:{v6}", "--bind", f"unix:{path}"]
        addresses += [("::1", v6), path]
    server.start(*options, app="testapps:slow", workers=2).wait_ready(2)
    load = stop_under_load(server, addresses, ask_slow(b"0.3"))
    assert_nothing_dropped(load, server)
    assert "graceful stop" in server.log()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=2)


def test_term_under_keep_alive_load(server: Server) -> None:
    """Idle kept-alive connections close at once (the client retries: RFC 9112 9.3.1); busy ones get
    their answer with Connection: close."""
    start_http(server, "--keepalive", "60", workers=2)
    load = stop_under_load(server, [server.address], KeepAliveClient("/sleep?0.3"))
    assert_nothing_dropped(load, server)


def test_graceful_timeout_closes_the_queue_and_counts_it(server: Server) -> None:
    server.start("--graceful-timeout", "1", app="testapps:slow", workers=1).wait_ready(1)
    busy = socket.create_connection(server.address)
    busy.sendall(b"30")
    wait_for(lambda: queue_length(server) == "0", what="the worker busy (the queue empty)")
    queued = [socket.create_connection(server.address) for _ in range(3)]
    wait_for(lambda: queue_length(server) == "3", what="three connections queued")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(STOP_BOUND) == 0
    assert "3 queued connections closed unserved" in server.log()
    for sock in [busy, *queued]:
        sock.close()


def queue_length(server: Server) -> str:
    """The accept queue of our listener, as ss(8) shows it (Recv-Q of the LISTEN line)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True).stdout
    return out.split()[1] if out.split() else ""


def test_a_listener_someone_else_holds_is_left_alone(server: Server) -> None:
    """fd:// (as systemd's socket unit): the stop never filters, unblocks or drains it; the next
    instance (here the test itself) serves what stayed queued, and nothing is refused."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(64)
    address = holder.getsockname()
    os.set_inheritable(holder.fileno(), True)
    argv = [sys.executable, "-m", "prefork", "run", "-w", "2", "--bind", f"fd://{holder.fileno()}", "testapps:slow"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}")
    with open(server.log_path, "wb") as err:
        proc = subprocess.Popen(argv, stderr=err, env=env, pass_fds=(holder.fileno(),), start_new_session=True)
    try:
        wait_for(lambda: server.log().count("booted") >= 2, what="boot")
        done = threading.Event()
        next_instance = threading.Thread(target=serve_until, args=(holder, done), daemon=True)
        with StopLoad([address], 8, ask_slow(b"0.3")) as load:
            load.wait_served(10)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(STOP_BOUND) == 0
            assert holder.getblocking()
            next_instance.start()  # serves what stayed queued, and what keeps coming
            load.wait_served(load.attempts[SERVED] + 10)
        done.set()
        next_instance.join(30)
        assert_nothing_dropped(load, server)
        assert load.attempts[NOT_ACCEPTED] == 0  # nothing refused: the socket stayed open, in the holder
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        holder.close()


def serve_until(listener: socket.socket, done: threading.Event) -> None:
    """Answer connections as testapps:slow does (without the sleep) until ``done`` and nothing comes."""
    listener.settimeout(0.2)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if done.is_set():
                return
            continue
        with conn:
            conn.settimeout(5)
            conn.recv(64)
            conn.sendall(b"1\n")


# --- --shutdown-delay ---


def test_shutdown_delay_keeps_serving_then_stops_cleanly(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    server.start("--shutdown-delay", "2", "--pid", str(pidfile), app="testapps:slow", workers=2).wait_ready(2)
    with StopLoad([server.address], 8, ask_slow(b"0.1")) as load:
        load.wait_served(10)
        server.signal(signal.SIGTERM)
        wait_for(lambda: "shutdown delay" in server.log(), what="the delay logged")
        assert snapshot(pidfile)["master"]["phase"] == "shutdown delay"
        before = load.attempts[SERVED]
        load.wait_served(before + 10)  # new connections are still served during the delay
        assert load.attempts[NOT_ACCEPTED] == 0
        assert server.wait_exit(STOP_BOUND + 2) == 0
    assert_nothing_dropped(load, server)


def test_term_during_the_delay_stops_at_once_and_quit_during_the_drain_is_fast(server: Server) -> None:
    server.start("--shutdown-delay", "600", app="testapps:slow", workers=1).wait_ready(1)
    busy = socket.create_connection(server.address)
    busy.sendall(b"30")
    server.signal(signal.SIGTERM)
    wait_for(lambda: "shutdown delay" in server.log(), what="the delay")
    server.signal(signal.SIGTERM)
    wait_for(lambda: "graceful stop" in server.log(), what="the graceful stop, at once")
    server.signal(signal.SIGQUIT)
    assert server.wait_exit(STOP_BOUND) == 0
    assert "fast stop" in server.log()
    busy.close()


# --- prefork stop ---


def test_stop_is_graceful_by_default_and_waits_for_delay_and_drain(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    server.start("--pid", str(pidfile), "--shutdown-delay", "1", app="testapps:slow", workers=1).wait_ready(1)
    answers: list[bytes] = []
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"2")
        reader = threading.Thread(target=lambda: answers.append(sock.recv(100)))
        reader.start()
        result = prefork("stop", "--pid", str(pidfile))
        reader.join(30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"stopped: master {server.pid} exited (graceful stop)"
    assert answers and answers[0].strip().isdigit()


def test_stop_fast_sends_quit(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    server.start("--pid", str(pidfile), "--shutdown-delay", "600", app="testapps:slow", workers=1).wait_ready(1)
    result = prefork("stop", "--fast", "--pid", str(pidfile))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"stopped: master {server.pid} exited (fast stop)"
    assert "fast stop" in server.log()


def test_stop_wait_covers_delay_timeout_and_margin() -> None:
    from prefork.client import stop_wait

    master = {"shutdown_delay": 20.0, "graceful_timeout": 30.0}
    assert stop_wait(master, fast=False) > 50.0
    assert stop_wait(master, fast=True) < 20.0


# --- a handler that forks ---


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize(("how", "status"), [(b"return", 0), (b"exit", 7)])
def test_a_process_forked_by_a_handler_leaves_when_the_handler_returns(
        server: Server, threads: str, how: bytes, status: int) -> None:
    server.start("--threads", threads, app="testapps:forks", workers=1).wait_ready(1)
    answer = request(server.address, how, timeout=10).split()
    assert answer[1:] == [str(status).encode()], answer  # the child's exit status, seen by its parent
    wait_for(lambda: "forked by handler testapps:forks" in server.log(), what="the log line naming the handler")
    line = next(line for line in server.log().splitlines() if "forked by handler testapps:forks" in line)
    assert answer[0].decode() in line
    assert server.ask(b"0", timeout=10).split()[1] == b"0"  # the worker goes on serving


@pytest.mark.parametrize("keepalive", ["2", "0"])
def test_a_process_forked_by_a_wsgi_app_leaves_when_its_answer_is_written(server: Server, keepalive: str) -> None:
    # With keep-alive the worker waits in its kept-connection loop: a child coming back there must
    # leave too, or it would serve on (and the parent, waiting for it, would never answer).
    start_http(server, "--keepalive", keepalive, app="wsgiapps:forks", workers=1)
    with socket.create_connection(server.address, timeout=20) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"parent " not in data or not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    words = data[data.index(b"parent "):].split()
    assert words[3] == b"0", data  # the child left with status 0 once the app had returned in it
    wait_for(lambda: "forked by handler wsgiapps:forks" in server.log(), what="the log line naming the app")
