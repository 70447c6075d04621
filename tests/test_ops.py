"""Operators' features (issue 17): --boot-timeout, /livez and /readyz, JSON logs, `prefork dump`."""

from __future__ import annotations

import signal

from conftest import Server, wait_for


def test_boot_timeout_kills_a_worker_that_never_finishes_booting(server: Server) -> None:
    """A worker still importing after --boot-timeout is killed (its stack logged); at first start, 5 in a row stop
    the server with status 3."""
    server.start("--boot-timeout", "0.5", "--timeout", "0", app="testapps:slow_boot()", workers=1,
                 env={"SLOW_BOOT": "60"})
    assert server.wait_exit(60) == 3
    log = server.log()
    assert "did not boot within 0.5s (--boot-timeout)" in log
    assert "in slow_boot" in log  # the faulthandler stack shows where the boot hangs


def test_boot_timeout_is_independent_of_timeout(server: Server) -> None:
    """A slow import (2 s) boots under --timeout 1: the request timeout no longer judges the boot."""
    server.start("--timeout", "1", app="testapps:slow_boot()", workers=1, env={"SLOW_BOOT": "2"}).wait_ready(1)
    pid = server.ask_pid()
    assert pid in server.worker_pids()
    assert "did not boot" not in server.log()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0


def test_boot_timeout_zero_means_no_limit(server: Server) -> None:
    server.start("--boot-timeout", "0", "--timeout", "0.5", app="testapps:slow_boot()", workers=1,
                 env={"SLOW_BOOT": "2"}).wait_ready(1)
    assert "did not boot" not in server.log()
    wait_for(lambda: server.ask_pid() in server.worker_pids(), 10, what="an answer")
