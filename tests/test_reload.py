"""Issue 3: zero-downtime reload, failed reloads, crash loops, stuck and leaking workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from conftest import Server, request, wait_for
from load import Load


def generation_of(proc: psutil.Process) -> int:
    title = proc.cmdline()[0]
    return int(title.rsplit("gen ", 1)[1])


@pytest.mark.timeout(90)
def test_hup_storm_under_load_drops_nothing(server: Server) -> None:
    server.start(workers=2).wait_ready(2)
    with Load(server.address, concurrency=4) as load:
        load.wait_requests(50)
        for _ in range(20):  # a HUP every half second for ten seconds
            server.signal(signal.SIGHUP)
            time.sleep(0.5)
        wait_for(lambda: "reload done: generation" in server.log())
        load.wait_requests(50)
    assert load.failures == {}, f"{load.failures} (ok: {load.ok})"
    assert load.ok > 200
    assert server.proc is not None and server.proc.poll() is None


def test_failed_reload_keeps_old_generation(server: Server, tmp_path: Path) -> None:
    app = tmp_path / "flaky.py"
    app.write_text("import os\ndef handler(conn, addr):\n    conn.sendall(b'v1 %d' % os.getpid())\n")
    server.start("--chdir", str(tmp_path), app="flaky:handler").wait_ready(2)
    old = server.worker_pids()
    app.write_text("raise RuntimeError('broken deploy')\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in server.log(), what="reload failure logged")
    log = server.log()
    assert "broken deploy" in log and "Traceback" in log  # the cause, with its traceback
    assert "generation 1 keeps serving" in log
    # The trial generation's other workers are told to leave when the first one fails;
    # on a loaded machine one may still be on its way out when the failure is logged.
    wait_for(lambda: server.worker_pids() == old, what="only the old generation left")
    assert server.ask().startswith(b"v1")
    # Fix the code: the next HUP loads it.
    app.write_text("import os\ndef handler(conn, addr):\n    conn.sendall(b'v2 %d' % os.getpid())\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: not (server.worker_pids() & old) and len(server.serving_pids()) == 2, what="new generation")
    assert server.ask().startswith(b"v2")


def test_reload_changes_binds(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "prefork.toml"
    sock_path = tmp_path / "added.sock"
    config.write_text(f'bind = ["127.0.0.1:{server.port}"]\n')
    server.start("-c", str(config), bind=False).wait_ready(2)
    old = server.worker_pids()
    config.write_text(f'bind = ["unix:{sock_path}"]\n')
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload done" in server.log(), what="reload")
    # The old generation may still accept on the removed address until it has left.
    wait_for(lambda: not (server.worker_pids() & old), what="old generation gone")
    assert int(request(str(sock_path))) in server.worker_pids()
    with pytest.raises(ConnectionRefusedError):
        request(server.address)


def test_stuck_worker_is_killed_with_traceback(server: Server) -> None:
    server.start("--timeout", "1", app="testapps:slow", workers=1).wait_ready(1)
    victim = server.worker_pids().pop()
    import socket

    sock = socket.create_connection(server.address)
    sock.sendall(b"60")
    wait_for(lambda: victim not in server.worker_pids(), timeout=15, what="stuck worker killed")
    wait_for(lambda: len(server.serving_pids()) == 1, what="replacement")
    log = server.log()
    assert "stuck for" in log and "on connection from 127.0.0.1:" in log
    assert "in slow" in log  # faulthandler's stack of where it was stuck
    sock.close()


def test_idle_worker_is_never_stuck(server: Server) -> None:
    server.start("--timeout", "1", workers=1).wait_ready(1)
    pids = server.worker_pids()
    time.sleep(2.5)
    assert server.worker_pids() == pids


def test_max_requests_recycles_without_failures(server: Server) -> None:
    server.start("--max-requests", "20", "--max-requests-jitter", "5", workers=2).wait_ready(2)
    first = server.worker_pids()
    with Load(server.address, concurrency=2) as load:
        wait_for(lambda: not (server.worker_pids() & first), timeout=20, what="all workers recycled")
        load.wait_requests(20)
    assert load.failures == {}
    assert "--max-requests" in server.log()
    # A worker keeps serving until its replacement has booted (no dip in capacity), so under
    # load it may serve a few more than N + J; what matters is that every one was recycled.


def test_memory_limit_recycles_worker(server: Server) -> None:
    server.start("--max-worker-memory", "1", workers=1).wait_ready(1)  # 1 MB: every worker is over
    first = server.worker_pids()
    wait_for(lambda: first and not (server.worker_pids() & first), timeout=20, what="recycled for memory")
    assert "limit 1 MB" in server.log()
    assert server.ask_pid() in server.worker_pids()


def test_dead_worker_after_boot_failure_backs_off(server: Server, tmp_path: Path) -> None:
    app = tmp_path / "later.py"
    app.write_text("def handler(conn, addr):\n    conn.sendall(b'ok')\n")
    server.start("--chdir", str(tmp_path), app="later:handler", workers=1).wait_ready(1)
    app.write_text("import os\nos._exit(9)\n")
    os.kill(server.worker_pids().pop(), signal.SIGKILL)
    # The replacement cannot boot: retried with back-off, the master stays up.
    wait_for(lambda: server.log().count("exited during boot") >= 3, timeout=20, what="retries")
    assert "retrying in 0.2s" in server.log() or "retrying in 0.4s" in server.log()
    assert server.proc is not None and server.proc.poll() is None
    app.write_text("def handler(conn, addr):\n    conn.sendall(b'fixed')\n")
    wait_for(lambda: len(server.serving_pids()) == 1, timeout=20, what="booted once fixed")
    assert server.ask() == b"fixed"


def test_master_fds_and_memory_stable_over_reloads(server: Server) -> None:
    server.start(workers=1).wait_ready(1)
    master = psutil.Process(server.pid)

    def reload_once(n: int) -> None:
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.log().count("reload done") >= n, timeout=15, what=f"reload {n}")

    for n in range(1, 11):
        reload_once(n)
    fds, rss = master.num_fds(), master.memory_info().rss
    for n in range(11, 101):
        reload_once(n)
    assert master.num_fds() <= fds
    assert master.memory_info().rss < rss + 2 * 1024 * 1024


@pytest.mark.timeout(60)
def test_superseding_reloads_drop_nothing(server: Server, tmp_path: Path) -> None:
    """HUPs faster than a generation can boot: each supersedes the one still on trial."""
    # Importing the app takes 0.3 s and HUPs come every 0.05 s, so every reload but the last
    # finds a generation still booting (without this the test depended on the machine's speed).
    (tmp_path / "slowboot.py").write_text("import time\ntime.sleep(0.3)\nfrom testapps import pid\n")
    server.start("--chdir", str(tmp_path), app="slowboot:pid", workers=2).wait_ready(2)
    with Load(server.address, concurrency=4) as load:
        load.wait_requests(50)
        for _ in range(30):
            server.signal(signal.SIGHUP)
            time.sleep(0.05)
        wait_for(lambda: "reload done" in server.log(), timeout=20)
        load.wait_requests(50)
    assert load.failures == {}, f"{load.failures} (ok: {load.ok})"
    assert "superseded by a newer reload" in server.log()
