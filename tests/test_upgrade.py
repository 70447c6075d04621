"""Issue 3: binary upgrade with USR2, under load, with zero failed connections."""

from __future__ import annotations

import os
import signal
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
