"""Kept-alive connections wait in the worker's epoll set (prefork/keepalive.py): real workers, real clients."""

from __future__ import annotations

import http.client
import select
import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import Server, wait_for
from control_helpers import prefork, snapshot
from http_helpers import closed_by_server, connect, get, read_response, start_http

from prefork.scoreboard import Scoreboard

pytest.importorskip("httptools")

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def ask(sock: socket.socket, request: bytes = GET) -> tuple[int, str | None, bytes]:
    """One request on a kept connection: status, the Connection header, the body."""
    sock.sendall(request)
    response = read_response(sock)
    return response.status, response.getheader("Connection"), response.read()


def test_the_slot_shows_each_requests_peer() -> None:
    """A kept connection's next request does not write its peer again (scoreboard.Slot.shown): the slot
    still shows the peer of every request, also after a PROXY header's client was written in between."""
    board = Scoreboard(2)
    slot = board.slots[board.allocate(0, 0, 1) or 0]
    for peer in ("10.0.0.1:1000", "10.0.0.1:1000", "10.0.0.2:2000", "10.0.0.1:1000"):
        slot.begin(peer)
        assert slot.peer_text == peer
        slot.end()
    slot.set_peer("192.0.2.7:7")  # connection.py, from a PROXY header
    slot.begin("10.0.0.1:1000")
    assert slot.peer_text == "10.0.0.1:1000"


def test_one_worker_keeps_many_connections(server: Server) -> None:
    """Five clients, one worker: every request on every connection is answered, none is closed."""
    start_http(server, workers=1)
    socks = [connect(server.address) for _ in range(5)]
    try:
        pids = set()
        for _ in range(3):
            for sock in socks:
                status, connection, body = ask(sock)
                assert status == 200 and connection is None
                pids.add(int(body))
        assert len(pids) == 1
    finally:
        for sock in socks:
            sock.close()


def test_threads_keep_connections_each(server: Server) -> None:
    start_http(server, "--threads", "2", workers=1)
    socks = [connect(server.address) for _ in range(6)]
    try:
        for _ in range(3):
            for sock in socks:
                status, connection, _ = ask(sock)
                assert status == 200 and connection is None
    finally:
        for sock in socks:
            sock.close()


def test_keepalive_max_closes_the_longest_idle(server: Server) -> None:
    start_http(server, "--keepalive-max", "2", workers=1)
    socks = []
    for _ in range(3):  # one after the other: an order of idleness
        socks.append(connect(server.address))
        assert ask(socks[-1])[0] == 200
    oldest, middle, newest = socks
    with oldest, middle, newest:
        assert closed_by_server(oldest, 10)
        assert ask(middle)[0] == 200 and ask(newest)[0] == 200


def test_keepalive_max_has_bounds(tmp_path: Path) -> None:
    for value, why in (("0", "0 is too small (expected an integer from 1 to 65536)"),
                       ("70000", "70000 is too large (expected an integer from 1 to 65536)")):
        result = prefork("run", "--wsgi", "--keepalive-max", value, "wsgiapps:app")
        assert result.returncode == 2 and why in result.stderr
        assert "Traceback" not in result.stderr


def test_new_connection_not_queued_behind_kept_ones(server: Server) -> None:
    """Two kept clients and a new one become ready while the only worker is busy: the new one is not last."""
    start_http(server, workers=1)
    busy, first, second = (connect(server.address) for _ in range(3))
    with busy, first, second:
        for sock in (busy, first, second):
            assert ask(sock)[0] == 200
        busy.sendall(b"GET /sleep?1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # the worker is in the application now
        slow = b"GET /sleep?0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
        first.sendall(slow)
        second.sendall(slow)
        with connect(server.address) as new:
            new.sendall(slow)
            order = []
            waiting = {first: "first", second: "second", new: "new"}
            deadline = time.monotonic() + 30
            while waiting and time.monotonic() < deadline:
                readable, _, _ = select.select(list(waiting), [], [], 1)
                order += [waiting.pop(sock) for sock in readable]
            assert len(order) == 3 and order[-1] != "new", order
            assert read_response(busy).status == 200


def test_max_per_source_counts_idle_kept_connections(server: Server) -> None:
    """--max-per-source 1: a client's idle kept-alive connection still counts against its host."""
    start_http(server, "--max-per-source", "1", workers=2)
    with connect(server.address) as kept:
        assert ask(kept)[0] == 200  # now idle, kept
        with connect(server.address) as second:
            second.sendall(GET)
            assert closed_by_server(second, 10)  # refused before any answer
        assert ask(kept)[0] == 200
    assert "(--max-per-source)" in server.log()


def test_timeout_sees_a_stuck_app_not_idle_kept_connections(server: Server, tmp_path: Path) -> None:
    """Kept idle connections leave the slot idle (no --timeout kill); a stuck app beside them is killed."""
    pidfile = tmp_path / "prefork.pid"
    server.start("--wsgi", "--timeout", "2", "--keepalive", "60", "--pid", str(pidfile), app="wsgiapps:app",
                 workers=1).wait_ready(1)
    [before] = server.worker_pids()
    with connect(server.address) as kept:
        assert int(ask(kept)[2]) == before
        wait_for(lambda: [w["state"] for w in snapshot(pidfile)["workers"]] == ["idle"], 10, what="an idle slot")
        time.sleep(3)  # idle longer than --timeout, holding a kept connection
        assert server.worker_pids() == {before}
        assert int(ask(kept)[2]) == before
        with connect(server.address, timeout=60) as stuck:
            stuck.sendall(b"GET /sleep?60 HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: server.worker_pids() and server.worker_pids() != {before}, 30,
                     what="the stuck worker replaced")
    assert "stuck for" in server.log()


def test_reload_finishes_the_request_and_closes_idle_kept(server: Server) -> None:
    """HUP: the request in progress is answered (Connection: close); idle kept connections are closed."""
    start_http(server, "--keepalive", "60", workers=1)
    [old] = server.worker_pids()
    with connect(server.address) as idle, connect(server.address, timeout=30) as busy:
        assert ask(idle)[0] == 200 and ask(busy)[0] == 200
        busy.sendall(b"GET /sleep?1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        server.signal(signal.SIGHUP)
        response = read_response(busy)
        assert response.status == 200 and response.getheader("Connection") == "close"
        assert int(response.read()) == old
        assert closed_by_server(idle, 20)
    wait_for(lambda: server.worker_pids() and old not in server.worker_pids(), 30, what="the new worker")
    assert int(get(server.address, "/")[2]) != old


def test_max_requests_retires_without_cutting_a_request(server: Server) -> None:
    start_http(server, "--max-requests", "3", workers=1)
    pids: set[int] = set()
    sock = connect(server.address)
    deadline = time.monotonic() + 30
    try:
        while len(pids) < 2 and time.monotonic() < deadline:  # until the replacement answers
            try:
                status, connection, body = ask(sock)
            except http.client.RemoteDisconnected:
                # Closed while idle, before any byte of an answer: the request raced the retiring
                # worker's close of its idle connections, and a client retries it (RFC 9112 9.3.1).
                sock.close()
                sock = wait_for(lambda: connect(server.address), 30, what="a worker")
                continue
            assert status == 200
            pids.add(int(body))
            if connection == "close":
                assert closed_by_server(sock, 10)
                sock.close()
                sock = wait_for(lambda: connect(server.address), 30, what="a worker")
    finally:
        sock.close()
    assert len(pids) >= 2


def test_graceful_stop_closes_idle_kept_connections_at_once(server: Server) -> None:
    """TERM while kept connections are idle: all closed at once, and the master exits."""
    start_http(server, "--keepalive", "60", workers=1)
    socks = [connect(server.address) for _ in range(3)]
    try:
        for sock in socks:
            assert ask(sock)[0] == 200
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        for sock in socks:
            assert closed_by_server(sock, 20)
        assert server.wait_exit(30) == 0
        assert time.monotonic() - started < 20  # not --keepalive's 60 s
    finally:
        for sock in socks:
            sock.close()


def test_a_quick_request_goes_before_one_on_a_slow_connection(server: Server) -> None:
    """Right after a slow request, a kept connection whose last request was slow lets a quick one go first."""
    start_http(server, workers=1)
    busy, slow, quick = (connect(server.address, timeout=30) for _ in range(3))
    with busy, slow, quick:
        assert ask(slow, b"GET /sleep?0.1 HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200  # slow, by its last request
        assert ask(quick)[0] == 200 and ask(busy)[0] == 200
        busy.sendall(b"GET /sleep?0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # the worker is in the application now
        slow.sendall(b"GET /sleep?0.1 HTTP/1.1\r\nHost: x\r\n\r\n")  # ready first
        time.sleep(0.05)
        quick.sendall(GET)
        order = []
        waiting = {slow: "slow", quick: "quick"}
        deadline = time.monotonic() + 30
        while waiting and time.monotonic() < deadline:
            readable, _, _ = select.select(list(waiting), [], [], 1)
            order += [waiting.pop(sock) for sock in readable]
        assert order == ["quick", "slow"]
        assert read_response(busy).status == 200
