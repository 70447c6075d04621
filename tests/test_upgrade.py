"""Issue 3: binary upgrade with USR2, under load, with zero failed connections."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import psutil
import pytest
from conftest import Server, wait_for
from load import Load
from pidfile_helpers import read_pid


@pytest.mark.timeout(60)
def test_usr2_upgrade_under_load(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    server.start("--pid", str(pidfile), workers=2).wait_ready(2)
    old_master = server.pid
    old_workers = server.worker_pids()
    with Load(server.address, concurrency=4) as load:
        load.wait_requests(50)
        server.signal(signal.SIGUSR2)
        wait_for(lambda: (read_pid(pidfile) or old_master) != old_master, what="new master writes the pid file")
        new_master = read_pid(pidfile)
        assert new_master is not None
        # The old master renamed its pid file, and exits by itself once the new one serves.
        wait_for(lambda: server.proc is not None and server.proc.poll() is not None, timeout=20,
                 what="old master exits")
        assert server.proc is not None and server.proc.returncode == 0
        assert not Path(str(pidfile) + ".oldbin").exists()
        load.wait_requests(50)
    assert load.failures == {}, load.failures
    new_workers = {c.pid for c in psutil.Process(new_master).children()}
    assert len(new_workers) == 2 and not (new_workers & old_workers)
    answers = {int(a) for a in list(load.answers)[-10:]}
    assert answers & new_workers
    log = server.log()
    assert "upgrade: started new master" in log and "retiring this one" in log
    os.kill(new_master, signal.SIGTERM)
    wait_for(lambda: not psutil.pid_exists(new_master) or psutil.Process(new_master).status() == "zombie",
             what="new master stops")
    assert not pidfile.exists()


def test_failed_upgrade_keeps_old_master(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    app = tmp_path / "deploy.py"
    app.write_text("import os\ndef handler(conn, addr):\n    conn.sendall(b'%d' % os.getpid())\n")
    server.start("--pid", str(pidfile), "--chdir", str(tmp_path), app="deploy:handler").wait_ready(2)
    app.write_text("raise ImportError('bad release')\n")
    server.signal(signal.SIGUSR2)
    wait_for(lambda: "upgrade failed" in server.log(), timeout=20, what="upgrade failure")
    assert read_pid(pidfile) == server.pid
    assert not Path(str(pidfile) + ".oldbin").exists()
    assert server.ask_pid() in server.worker_pids()


def test_new_master_is_not_the_old_masters_child(server: Server) -> None:
    """Issue 13: the new master is adopted by the reaper (a service manager must see it as its own child)."""
    server.start(app="testapps:hold", workers=1).wait_ready(1)
    old_master = server.pid
    with socket.create_connection(server.address, timeout=10) as held:
        assert int(held.recv(64)) in server.worker_pids()  # an old worker holds it: the old master stays
        server.signal(signal.SIGUSR2)
        wait_for(lambda: "retiring this one" in server.log(), timeout=20, what="the new master serving")
        started = re.search(r"started new master \(pid (\d+)\)", server.log())
        assert started is not None
        new_master = psutil.Process(int(started.group(1)))
        assert server.proc is not None and server.proc.poll() is None  # still draining our connection
        assert new_master.ppid() != old_master
        assert new_master.pid not in {c.pid for c in psutil.Process(old_master).children()}
    assert server.wait_exit(20) == 0
    new_master.terminate()
    psutil.wait_procs([new_master], timeout=20)


def test_a_stale_upgrade_variable_is_not_an_upgrade(server: Server) -> None:
    """The replaced master is recognised by pid and start time, not by being the parent."""
    # Our own pid (we are prefork's parent) with a start time that is not ours.
    server.start(workers=1, env={"_PREFORK_UPGRADE_FROM": f"{os.getpid()}:1"}).wait_ready(1)
    server.ask_pid()
    assert "asking the old master" not in server.log()
