"""Operators' features (issue 17): --boot-timeout, /livez and /readyz, JSON logs, `prefork dump`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, TESTS, Server, free_port, request, wait_for
from control_helpers import prefork, snapshot
from pidfile_helpers import read_pid

from prefork import devreload, protocol
from prefork.devreload import wanted


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


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_readyz_through_boot_reload_and_stop(server: Server, tmp_path: Path) -> None:
    """503 while booting, 200 throughout a reload (old workers serve while the new boot), 503 once stopping;
    /livez 200 all along."""
    delay = tmp_path / "delay"
    delay.write_text("2")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server.start("--metrics-bind", f"127.0.0.1:{port}", app="testapps:slow_boot()", workers=2,
                 env={"SLOW_BOOT_FILE": str(delay)})
    first = wait_for(lambda: answer_or_none(f"{base}/readyz"), 30, what="the metrics listener")
    assert first == (503, "booting: 0 of 2 workers booted\n"), first
    assert get(f"{base}/livez") == (200, "ok\n")
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, 30, what="ready")
    server.wait_ready(2)
    assert get(f"{base}/readyz") == (200, "ready: 2 of 2 workers booted\n")

    server.signal(signal.SIGHUP)
    answers = []
    while len(re.findall(r"gen 2 \(pid \d+\) booted", server.log())) < 2:
        answers.append(get(f"{base}/readyz")[0])
        assert len(answers) < 2000, server.log()
        time.sleep(0.02)
    assert len(answers) > 10 and set(answers) == {200}, answers  # the reload took seconds: no flap
    wait_for(lambda: len(server.worker_pids()) == 2 and workers_in(base, "idle") == 2, 30,
             what="the old generation gone")  # else the next connection may go to a worker retiring

    with socket.create_connection(server.address, timeout=30) as busy:
        busy.sendall(b"4\n")  # one worker busy for 4 s
        wait_for(lambda: busy_workers(base) == 1, 10, what="a busy worker")
        server.signal(signal.SIGTERM)
        wait_for(lambda: get(f"{base}/readyz") == (503, "draining\n"), 10, what="503 while stopping")
        assert get(f"{base}/livez") == (200, "ok\n")
        assert busy.recv(64)
    assert server.wait_exit(30) == 0


def test_readyz_is_503_during_the_shutdown_delay(server: Server) -> None:
    """After TERM with --shutdown-delay the server still serves, but /readyz says 503 at once (view.phase):
    the load balancer stops sending before the workers stop accepting."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server.start("--metrics-bind", f"127.0.0.1:{port}", "--shutdown-delay", "60", app="testapps:pid", workers=1)
    server.wait_ready(1)
    wait_for(lambda: answer_or_none(f"{base}/readyz") == (200, "ready: 1 of 1 workers booted\n"), 30,
             what="ready")
    server.signal(signal.SIGTERM)
    wait_for(lambda: get(f"{base}/readyz") == (503, "shutdown delay\n"), 10, what="503 in the shutdown delay")
    with socket.create_connection(server.address, timeout=30) as conn:
        assert conn.recv(64).strip().isdigit()  # still served meanwhile
    server.signal(signal.SIGTERM)  # a second TERM: the stop starts at once
    assert server.wait_exit(30) == 0


def test_readyz_head_and_unknown_path(server: Server) -> None:
    port = free_port()
    server.start("--metrics-bind", f"127.0.0.1:{port}", workers=1).wait_ready(1)
    answer = request(("127.0.0.1", port), b"HEAD /readyz HTTP/1.0\r\n\r\n").decode()
    assert answer.startswith("HTTP/1.1 200 OK\r\n") and answer.endswith("\r\n\r\n"), answer
    assert get(f"http://127.0.0.1:{port}/nowhere")[0] == 404


def answer_or_none(url: str) -> tuple[int, str] | None:
    try:
        return get(url)
    except OSError:
        return None


def busy_workers(base: str) -> int:
    return workers_in(base, "busy")


def workers_in(base: str, state: str) -> int:
    """prefork_workers{state=...}, from /metrics."""
    found = re.search(rf'^prefork_workers\{{state="{state}"\}} (\d+)', get(f"{base}/metrics")[1], re.M)
    return int(found.group(1)) if found else 0


HAPROXY_CHECK = """\
global
    stats socket {stats} mode 600
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
backend app
    option httpchk GET /readyz
    http-check expect status 200
    server web {server} check port {metrics} inter 200ms fall 1 rise 1
frontend front
    bind 127.0.0.1:{front}
    default_backend app
"""


def haproxy_state(stats: Path) -> str:
    """The backend server's status as HAProxy's stats socket shows it (UP, DOWN, ...)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    row = next(line for line in text.splitlines() if line.startswith("app,web,"))
    return row.split(",")[17]


def test_haproxy_httpchk_follows_readyz(server: Server, tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed")
    metrics = free_port()
    server.start("--metrics-bind", f"127.0.0.1:{metrics}", app="testapps:slow", workers=1).wait_ready(1)
    stats = tmp_path / "haproxy.sock"
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CHECK.format(stats=stats, server=f"127.0.0.1:{server.port}", metrics=metrics,
                                           front=free_port()))
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: stats.exists() and haproxy_state(stats) == "UP", 20, what="HAProxy: UP")
        with socket.create_connection(server.address, timeout=30) as busy:
            busy.sendall(b"3\n")
            wait_for(lambda: busy_workers(f"http://127.0.0.1:{metrics}") == 1, 10, what="a busy worker")
            server.signal(signal.SIGTERM)
            wait_for(lambda: haproxy_state(stats) == "DOWN", 20, what="HAProxy: DOWN once stopping")
            assert busy.recv(64)
    finally:
        proxy.kill()
        proxy.wait(5)
    assert server.wait_exit(30) == 0


def test_dump_prints_the_stack_of_a_busy_worker_and_stops_nothing(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "web.pid"
    server.start("--pid", str(pidfile), app="testapps:spin", workers=2).wait_ready(2)
    workers = server.worker_pids()
    with socket.create_connection(server.address, timeout=30) as busy:
        busy.sendall(b"5\n")  # one worker computes in spin_busily for 5 s
        wait_for(lambda: any(w["state"] == "busy" for w in snapshot(pidfile)["workers"]), 10, what="a busy worker")
        result = prefork("dump", "--pid", str(pidfile))
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(" gen 1 (pid ") == 2, result.stdout
        assert "in spin_busily" in result.stdout and "in spin\n" in result.stdout, result.stdout
        assert "in accept" in result.stdout or "in accept_loop_single" in result.stdout  # the idle one
        assert int(busy.recv(64)) in workers  # it finished its connection
    one = prefork("dump", "--pid", str(pidfile), "--worker", "1")
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("worker 1 gen 1 (pid ") and one.stdout.count(" gen 1 (pid ") == 1, one.stdout
    assert server.worker_pids() == workers  # nothing stopped
    assert "Python stack" in server.log() and "in spin_busily" in server.log()
    missing = prefork("dump", "--pid", str(pidfile), "--worker", "7")
    assert missing.returncode == 6 and missing.stderr.strip().endswith("no serving worker 7 of generation 1 to dump")


def test_a_stack_ends_at_the_workers_mark_not_at_a_pause(caplog: pytest.LogCaptureFixture) -> None:
    """The master's side of a stack pipe: a worker descheduled midway through faulthandler's writes
    (longer than a scheduler slice, shorter than QUIET) still gives one record, ended by its mark."""
    import selectors

    from prefork.stacks import QUIET, STACK_END, Stacks
    from prefork.view import WorkerProcess

    with selectors.DefaultSelector() as selector:
        stacks = Stacks(selector)
        read_fd, write_fd = stacks.new_pipe()
        stacks.watch(read_fd, WorkerProcess(os.getpid(), 0, 1, 0, time.monotonic()))
        try:
            with caplog.at_level(logging.INFO, logger="prefork"):
                os.write(write_fd, b'Current thread 0x1 (most recent call first):\n  File "a.py", line 1 in ')
                for key, _ in selector.select(5):
                    key.data()
                time.sleep(0.3)  # a pause the old 0.2 s quiet period took for the end
                stacks.flush_due(time.monotonic())
                assert stacks.seq == 0 and stacks.deadline() is not None and QUIET > 0.3
                os.write(write_fd, b'spin\n  File "b.py", line 2 in main\n' + STACK_END)
                for key, _ in selector.select(5):
                    key.data()
            assert stacks.seq == 1 and stacks.deadline() is None  # ended by the mark, not by a timer
            (stack,) = stacks.answer()["stacks"].values()  # type: ignore[union-attr]
            assert stack["stack"].endswith('line 1 in spin\n  File "b.py", line 2 in main\n'), stack
            assert [r.message for r in caplog.records] == [f"worker 0 gen 1 (pid {os.getpid()}): Python stack"]
        finally:
            os.close(write_fd)
            stacks.close()


def pending_signals(pid: int) -> int:
    """The signals pending for the process (ShdPnd of /proc/PID/status), as a bit mask."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return int(line.split()[1], 16)
    return 0


def test_dump_of_a_worker_that_exits_before_writing_ends_at_once(server: Server, tmp_path: Path) -> None:
    """A worker that exits with the dump signal still pending: the dump says so instead of waiting its timeout."""
    pidfile = tmp_path / "web.pid"
    server.start("--pid", str(pidfile), app="deafapps:pid", workers=1).wait_ready(1)
    (worker,) = server.worker_pids()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    dump = subprocess.Popen([sys.executable, "-m", "prefork", "dump", "--pid", str(pidfile), "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: pending_signals(worker) & (1 << (signal.SIGUSR2 - 1)), 30, what="the dump signal pending")
        os.kill(worker, signal.SIGKILL)
        out, err = dump.communicate(timeout=30)  # well within its --timeout 60: it did not wait that out
    finally:
        dump.kill()
    assert dump.returncode == 6, (out, err)
    assert f"worker 0 gen 1 (pid {worker}) exited before its stack was fetched" in err, (out, err)


def http_get(server: Server, target: str, agent: str = "test") -> bytes:
    return request(server.address, f"GET {target} HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent}\r\n"
                   f"Connection: close\r\n\r\n".encode(), timeout=30)


def test_json_logs_every_line_of_a_whole_run_parses(server: Server, tmp_path: Path) -> None:
    """Requests, a handler exception, a --timeout kill, a reload, a dump, a stop: every line of the log and the
    access log is one JSON object with the documented keys, stacks included."""
    pidfile, access = tmp_path / "web.pid", tmp_path / "access.log"
    server.start("--log-format", "json", "--wsgi", "--access-log", str(access), "--pid", str(pidfile),
                 "--timeout", "2", app="wsgiapps:raw", workers=2)
    wait_for(lambda: server.log().count('booted"') >= 2, 30, what=f"2 booted workers: {server.log()}")
    assert http_get(server, "/", agent='quote " and \\ backslash').startswith(b"HTTP/1.1 200")
    assert http_get(server, "/fail-before").startswith(b"HTTP/1.1 500")
    with contextlib.suppress(OSError):
        http_get(server, "/sleep?30")  # killed by --timeout after 2 s: no answer
    wait_for(lambda: "as it was killed" in server.log(), 30, what="the killed worker's stack")
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.log().count('gen 2 (pid') >= 2 and len(snapshot(pidfile)["workers"]) == 2
             and all(w["generation"] == 2 and w["state"] == "idle" for w in snapshot(pidfile)["workers"]), 60,
             what="generation 2 serving")
    dumped = prefork("dump", "--pid", str(pidfile))
    # An idle --wsgi worker waits in its kept-alive loop's epoll (keepalive.py: KeptLoop.turn).
    assert dumped.returncode == 0 and "in turn" in dumped.stdout, dumped.stdout + dumped.stderr
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0

    records = [json.loads(line) for line in server.log().splitlines()]  # every line, or this raises
    for entry in records:
        assert {"time", "level", "pid", "role", "message"} <= entry.keys() <= LOG_KEYS, entry
        datetime.fromisoformat(entry["time"])
        assert entry["role"] in ("master", "worker")
        assert ("worker" in entry and "generation" in entry) == (entry["role"] == "worker"), entry
    assert any(e["role"] == "worker" and "exc" in e and "on purpose" in e["exc"] for e in records)
    stacks = [e for e in records if "stack" in e]
    assert any(e["level"] == "error" and "in sleep" in e["stack"] for e in stacks), stacks  # --timeout
    assert sum(e["generation"] == 2 and e["level"] == "info" for e in stacks) == 2, stacks  # the dump
    assert all(e["role"] == "worker" and e["pid"] != server.pid for e in stacks)
    assert any(e["role"] == "master" and e["message"] == "master exiting" for e in records)

    if shutil.which("jq"):  # as an operator reads it
        piped = subprocess.run(["jq", "-c", "select(.stack) | .worker"], input=server.log(), capture_output=True,
                               text=True, timeout=30)
        assert piped.returncode == 0 and len(piped.stdout.split()) == len(stacks), piped.stderr

    lines = [json.loads(line) for line in access.read_text().splitlines()]
    assert {"/", "/fail-before"} <= {e["path"] for e in lines}
    first = next(e for e in lines if e["path"] == "/")
    assert first["user_agent"] == 'quote " and \\ backslash' and first["status"] == 200 and first["method"] == "GET"
    assert {"time", "remote_addr", "query", "protocol", "bytes", "duration", "referer", "pid"} <= first.keys()


LOG_KEYS = {"time", "level", "pid", "role", "worker", "generation", "message", "exc", "stack"}


def peak_workers_during_reload(server: Server, pidfile: Path, generation: int, workers: int) -> int:
    """HUP, then sample the live worker processes until ``workers`` of ``generation`` alone serve; the peak."""
    server.signal(signal.SIGHUP)
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, len(server.workers()))
        found = snapshot(pidfile)["workers"]
        return len(found) == workers and all(w["generation"] == generation and w["state"] == "idle" for w in found)

    wait_for(done, 60, interval=0.01, what=f"generation {generation} alone serving")
    return peak


@pytest.mark.parametrize(("strategy", "batch", "bound"), [("rolling", 1, 5), ("rolling", 2, 6), ("generation", 1, 8)])
def test_rolling_reload_holds_at_most_n_plus_k_workers(server: Server, tmp_path: Path, strategy: str, batch: int,
                                                       bound: int) -> None:
    budget, pidfile = tmp_path / "budget", tmp_path / "web.pid"
    budget.write_text("100")
    server.start("--pid", str(pidfile), "--reload-strategy", strategy, "--reload-batch", str(batch),
                 app="testapps:budget_boot()", workers=4, env={"BOOT_BUDGET": str(budget), "SLOW_BOOT": "0.4"})
    server.wait_ready(4)
    peak = peak_workers_during_reload(server, pidfile, 2, 4)
    if strategy == "rolling":
        assert 4 < peak <= bound, peak
    else:
        assert peak == bound, peak  # today's HUP: the whole new generation beside the old
    assert server.ask_pid() in server.worker_pids()
    assert snapshot(pidfile)["stats"]["reloads"] == 1


def test_rolling_reload_stops_at_a_failed_boot_and_the_next_hup_starts_afresh(server: Server,
                                                                              tmp_path: Path) -> None:
    budget, pidfile = tmp_path / "budget", tmp_path / "web.pid"
    budget.write_text("3")
    server.start("--pid", str(pidfile), "--reload-strategy", "rolling", app="testapps:budget_boot()", workers=3,
                 env={"BOOT_BUDGET": str(budget)}).wait_ready(3)
    budget.write_text("1")  # the first new worker boots, the second fails
    server.signal(signal.SIGHUP)
    wait_for(lambda: snapshot(pidfile)["stats"]["reload_failures"] == 1, 30, what="the failed reload")
    wait_for(lambda: sorted((w["generation"], w["state"]) for w in snapshot(pidfile)["workers"])
             == [(1, "idle"), (1, "idle"), (2, "idle")], 30, what="one worker replaced, two old serving")
    report = snapshot(pidfile)
    assert report["master"]["generation"] == 1 and report["master"]["pending_generation"] is None
    assert "boot budget spent" in report["stats"]["last_reload_error"] or "exited during boot" in \
        report["stats"]["last_reload_error"]
    for _ in range(6):
        assert server.ask_pid() in server.worker_pids()

    budget.write_text("100")
    assert peak_workers_during_reload(server, pidfile, 3, 3) <= 4
    assert snapshot(pidfile)["stats"]["reloads"] == 1


DEV_APP = '''\
import os

def handler(conn, addr):
    conn.sendall(b"{version} %d\\n" % os.getpid())
'''


def answer(server: Server) -> str:
    return server.ask().decode().split()[0]


def test_reload_restarts_workers_when_a_python_file_changes(server: Server, tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    (app_dir / "site-packages").mkdir(parents=True)
    (app_dir / "devapp.py").write_text(DEV_APP.format(version="v1"))
    extra = tmp_path / "settings.ini"
    extra.write_text("a")
    server.start("--reload", "--chdir", str(app_dir), "--reload-extra-file", str(extra), app="devapp:handler",
                 workers=1).wait_ready(1)
    assert answer(server) == "v1"
    watcher = [p for p in server.workers() if "prefork.devreload" in " ".join(p.cmdline())]
    assert len(watcher) == 1  # its own process, not a thread of the master

    def edited(path: Path, content: str, reloads: int) -> bool:
        path.write_text(content)  # again until the watcher, started asynchronously, has seen it
        return server.log().count("reloading: starting generation") >= reloads

    wait_for(lambda: edited(app_dir / "devapp.py", DEV_APP.format(version="v2"), 1), 30, interval=0.5,
             what="a reload after the edit")
    wait_for(lambda: answer(server) == "v2", 30, what="the new code serving")
    wait_for(lambda: edited(extra, "b", 2), 30, interval=0.5, what="a reload after the extra file changed")

    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    wait_for(lambda: not watcher[0].is_running() or watcher[0].status() == "zombie", 10, what="the watcher gone")


def watchers(server: Server) -> list[psutil.Process]:
    return [p for p in server.workers() if "prefork.devreload" in " ".join(p.cmdline())]


def test_a_watcher_that_dies_is_started_again_with_a_back_off(server: Server, tmp_path: Path) -> None:
    """A killed watcher is reaped and another started after 1 s, then 2 s for the next death; the new one
    reloads on an edit as the first did."""
    (tmp_path / "devapp.py").write_text(DEV_APP.format(version="v1"))
    server.start("--reload", "--chdir", str(tmp_path), app="devapp:handler", workers=1).wait_ready(1)
    first = wait_for(lambda: watchers(server), 10, what="the watcher")[0]
    first.kill()
    wait_for(lambda: "the file watcher exited (killed by SIGKILL); starting another in 1s" in server.log(), 10,
             what="the watcher's death noticed")
    second = wait_for(lambda: [w for w in watchers(server) if w.pid != first.pid], 10, what="a new watcher")[0]

    def edited() -> bool:
        (tmp_path / "devapp.py").write_text(DEV_APP.format(version="v2"))  # again until the new watcher sees it
        return "reloading: starting generation" in server.log()

    wait_for(edited, 30, interval=0.5, what="a reload after the edit, seen by the new watcher")
    wait_for(lambda: answer(server) == "v2", 30, what="the new code serving")
    second.kill()
    wait_for(lambda: "starting another in 2s" in server.log(), 10, what="the back-off doubled")
    wait_for(lambda: [w for w in watchers(server) if w.pid not in (first.pid, second.pid)], 10, what="a third")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0


def test_a_watcher_that_ran_a_while_starts_the_back_off_afresh() -> None:
    """The back-off is for a watcher that keeps dying: one that died after running STEADY seconds gets 1 s again."""
    watcher = devreload.Watcher(os.getpid())
    watcher.delay = 8.0  # three deaths in a row before
    for started_ago, expected in ((1.0, 8.0), (devreload.STEADY + 1, devreload.RESTART_START)):
        child = subprocess.Popen(["sleep", "60"])
        watcher.process, watcher.started = child, time.monotonic() - started_ago
        child.kill()
        pid, status = os.waitpid(child.pid, 0)  # as the master's reap does
        before = time.monotonic()
        watcher.exited(pid, status, stopping=False)
        assert watcher.process is None and watcher.restart_at is not None
        assert before + expected <= watcher.restart_at <= time.monotonic() + expected
        assert child.returncode == -signal.SIGKILL  # the Popen knows it was reaped (no "still running" warning)


def test_reload_is_refused_with_preload(server: Server) -> None:
    server.start("--reload", "--preload", workers=1)
    assert server.wait_exit(30) == 2
    assert server.log().strip().splitlines()[-1].endswith(
        "reload: cannot be used with preload (the app is imported once, in the master)"), server.log()


def test_reload_watches_python_files_of_the_app_and_the_extra_files(tmp_path: Path) -> None:
    extra = {tmp_path / "conf" / "app.toml"}
    assert wanted(tmp_path, extra, str(tmp_path / "app.py"))
    assert wanted(tmp_path, extra, str(tmp_path / "pkg" / "models.py"))
    assert wanted(tmp_path, extra, str(tmp_path / "conf" / "app.toml"))
    assert not wanted(tmp_path, extra, str(tmp_path / "notes.txt"))
    assert not wanted(tmp_path, extra, str(tmp_path / ".venv" / "lib" / "site-packages" / "x.py"))
    assert not wanted(tmp_path, extra, str(tmp_path / "lib" / "site-packages" / "x.py"))
    assert not wanted(tmp_path, extra, str(tmp_path / "pkg" / "__pycache__" / "m.py"))
    assert not wanted(tmp_path / "app", extra, str(tmp_path / "other.py"))


def test_readyz_during_a_binary_upgrade_each_master_answers_for_itself(server: Server, tmp_path: Path) -> None:
    """Both masters share the metrics address (SO_REUSEPORT): the retiring one, still finishing a connection,
    says 503 stopping; the new one 200."""
    pidfile, port = tmp_path / "web.pid", free_port()
    server.start("--pid", str(pidfile), "--metrics-bind", f"127.0.0.1:{port}", app="testapps:slow",
                 workers=1).wait_ready(1)
    with socket.create_connection(server.address, timeout=60) as busy:
        busy.sendall(b"20\n")  # keeps the old master in its graceful stop
        wait_for(lambda: busy_workers(f"http://127.0.0.1:{port}") == 1, 10, what="a busy worker")
        server.signal(signal.SIGUSR2)
        wait_for(lambda: "retiring this one" in server.log(), 30, what="the old master retiring")
        seen: set[tuple[int, str]] = set()

        def both_seen() -> bool:
            seen.add(get(f"http://127.0.0.1:{port}/readyz"))
            return (503, "draining\n") in seen and (200, "ready: 1 of 1 workers booted\n") in seen

        wait_for(both_seen, 20, interval=0.01, what="both masters' answers")
        assert seen <= {(503, "draining\n"), (200, "ready: 1 of 1 workers booted\n")}, seen
    new_master = wait_for(lambda: read_pid(pidfile) if read_pid(pidfile) != server.pid else None, 10)
    os.kill(new_master, signal.SIGQUIT)


def test_readyz_with_an_adaptive_pool_counts_its_minimum(server: Server) -> None:
    """The pool grows under load: while its new worker boots, /readyz stays 200 (--min-workers have booted)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server.start("--metrics-bind", f"127.0.0.1:{port}", "--min-workers", "1", "--max-workers", "3", "--spare", "1",
                 app="testapps:slow_boot()", workers=None, env={"SLOW_BOOT": "2"})
    wait_for(lambda: (answer_or_none(f"{base}/readyz") or (0, ""))[0] == 200, 30, what="ready")
    with socket.create_connection(server.address, timeout=30) as busy:
        busy.sendall(b"8\n")  # no idle worker left: the pool forks one more, which boots for 2 s
        wait_for(lambda: workers_in(base, "booting") == 1, 20, what="the pool forking one more")
        status, body = get(f"{base}/readyz")
        assert status == 200 and body.startswith("ready: ") and body.endswith(" of 1 workers booted\n"), body


def test_a_kept_worker_of_a_stopped_rollout_is_recycled_by_max_requests(server: Server, tmp_path: Path) -> None:
    """After a failed rolling reload, a kept (new-generation) worker that reaches --max-requests is replaced and
    retires like any other: the table goes back to N workers."""
    budget, pidfile = tmp_path / "budget", tmp_path / "web.pid"
    budget.write_text("2")
    server.start("--pid", str(pidfile), "--reload-strategy", "rolling", "--max-requests", "3",
                 app="testapps:budget_boot()", workers=2, env={"BOOT_BUDGET": str(budget)}).wait_ready(2)
    budget.write_text("1")  # index 0 is replaced, index 1 fails to boot
    server.signal(signal.SIGHUP)
    wait_for(lambda: sorted((w["generation"], w["state"]) for w in snapshot(pidfile)["workers"])
             == [(1, "idle"), (2, "idle")], 30, what="one worker replaced, one old serving")
    kept = next(w["pid"] for w in snapshot(pidfile)["workers"] if w["generation"] == 2)
    budget.write_text("100")
    for _ in range(40):
        server.ask_pid()
        if kept not in server.worker_pids():
            break
    wait_for(lambda: kept not in server.worker_pids(), 20, what=f"the kept worker retired: {server.log()}")
    wait_for(lambda: len(server.worker_pids()) == 2, 20, what="two workers again")


def test_the_stacks_answer_is_checked_by_its_own_schema() -> None:
    """The client reads ``stacks`` by its schema, not the status one (which would refuse it), and trusts
    nothing it reads there either."""
    good = b'{"seq": 2, "stacks": {"123": {"seq": 2, "stack": "File x"}}}'
    assert protocol.decode(good, protocol.STACKS)["stacks"]["123"]["stack"] == "File x"
    for bad in (b'{"seq": 2}', b'{"seq": 2, "stacks": {"123": {"seq": "2", "stack": ""}}}',
                b'{"seq": -1, "stacks": {}}', b'[]'):
        with pytest.raises(ValueError):
            protocol.decode(bad, protocol.STACKS)
    with pytest.raises(ValueError):
        protocol.decode(good)  # as a status answer
