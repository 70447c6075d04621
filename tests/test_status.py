"""``prefork status``: the table, the JSON, --watch, the control socket, and the errors for no server."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TESTS, Server, wait_for
from control_helpers import prefork, snapshot, status_json

from prefork import status_table

# --- pure functions ---


def test_duration_and_size_read_at_a_glance() -> None:
    assert status_table.duration(4.25) == "4.2s"
    assert status_table.duration(187) == "3m07s"
    assert status_table.duration(2 * 3600 + 5 * 60 + 9) == "2h05m"
    assert status_table.duration(3 * 86400 + 4 * 3600) == "3d04h"
    assert status_table.size(None) == "-"
    assert status_table.size(512) == "512B"
    assert status_table.size(5 * 2**20 + 2**19) == "5.5M"


def test_render_shows_master_and_busy_worker() -> None:
    now = 1_000_000.0
    report = {
        "master": {"pid": 10, "name": "app:h", "generation": 3, "pending_generation": None, "started": now - 65,
                   "listeners": ["127.0.0.1:8000"], "target_workers": 2, "threads": 1, "stopping": None},
        "stats": {"connections": 7, "restarts": {"died": 1}, "reloads": 2, "reload_failures": 0, "boot_failures": 0},
        "workers": [
            {"pid": 11, "index": 0, "generation": 3, "state": "busy", "requests": 5, "started": now - 60,
             "busy_for": 2.5, "peer": "127.0.0.1:4242", "threads": 1, "busy_threads": 1,
             "cpu_percent": 99.0, "rss": 20 * 2**20, "uss": 8 * 2**20},
            {"pid": 12, "index": 1, "generation": 3, "state": "idle", "requests": 2, "started": now - 60,
             "busy_for": None, "peer": None, "threads": 1, "busy_threads": 0,
             "cpu_percent": 0.0, "rss": 20 * 2**20, "uss": 8 * 2**20},
        ],
    }
    text = status_table.render(report, now=now)
    assert "prefork master 10 [app:h]  up 1m05s  generation 3  workers 2/2" in text
    assert "restarts 1 (died 1)" in text and "reloads 2" in text
    busy_row = next(line for line in text.splitlines() if " 11 " in line)
    for cell in ("busy", "2.5s", "127.0.0.1:4242", "99.0", "20.0M", "8.0M", "1m00s"):
        assert cell in busy_row


# --- against a running server ---


def start(server: Server, tmp_path: Path, *args: str, workers: int = 2) -> Path:
    pidfile = tmp_path / "prefork.pid"
    server.start("--pid", str(pidfile), *args, app="testapps:slow", workers=workers).wait_ready(workers)
    return pidfile


def test_status_json_reports_master_and_workers(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path)
    report = status_json(pidfile)
    master = report["master"]
    assert master["pid"] == server.pid and master["generation"] == 1
    assert master["listeners"] == [f"127.0.0.1:{server.port}"]
    assert time.time() - 60 < master["started"] <= time.time()
    workers = report["workers"]
    assert {w["pid"] for w in workers} == server.worker_pids()
    for worker in workers:
        assert worker["state"] == "idle" and worker["requests"] == 0
        assert worker["rss"] > 1_000_000 and worker["uss"] > 0


def test_busy_worker_shows_peer_and_duration(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path)
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"30")
        host, port = sock.getsockname()[:2]
        local = f"{host}:{port}"
        busy = wait_for(lambda: [w for w in snapshot(pidfile)["workers"] if w["state"] == "busy"],
                        30, what="a busy worker")
        assert busy[0]["peer"] == local and busy[0]["busy_for"] >= 0
        table = prefork("status", "--pid", str(pidfile))
        assert table.returncode == 0, table.stderr
        row = next(line for line in table.stdout.splitlines() if f" {busy[0]['pid']} " in line)
        assert "busy" in row and local in row
    # The slow connection stays busy for its 30s; a quick one on the other worker is counted.
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"0")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100)
    wait_for(lambda: snapshot(pidfile)["stats"]["connections"] >= 1, 30, what="a counted connection")


def test_control_socket_is_owner_only_and_removed_at_exit(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path)
    control = Path(f"{pidfile}.ctl")
    mode = control.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    server.signal(signal.SIGTERM)
    server.wait_exit(30)
    assert not control.exists() and not pidfile.exists()


def test_watch_redraws_until_interrupted(server: Server, tmp_path: Path) -> None:
    pidfile = start(server, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    watch = subprocess.Popen([sys.executable, "-m", "prefork", "status", "--watch", "--pid", str(pidfile)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        frames = 0
        while frames < 2:
            line = watch.stdout.readline() if watch.stdout else b""
            assert line, watch.stderr.read() if watch.stderr else ""
            frames += b"prefork master" in line  # one header line per frame (click drops ANSI on a pipe)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(30) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()


# --- no server ---


@pytest.mark.parametrize("content", [None, "not a pid\n", "999999999\n", "self"])
def test_status_without_a_server_says_so(tmp_path: Path, content: str | None) -> None:
    pidfile = tmp_path / "prefork.pid"
    if content == "self":
        content = f"{os.getpid()}\n"  # a live process, but not a prefork master: a stale, reused pid
    if content is not None:
        pidfile.write_text(content)
    result = prefork("status", "--pid", str(pidfile))
    assert result.returncode == 5
    assert result.stderr.startswith("Error: no server running") and str(pidfile) in result.stderr
    assert "Traceback" not in result.stderr
