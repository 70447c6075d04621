"""End-to-end tests of the core server: the real command, real sockets, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, Server, free_port, request, wait_for

# --- serving ---


def test_echo_example(server: Server) -> None:
    server.start(app="prefork.examples:echo").wait_ready(2)
    assert server.ask(b"hello, prefork") == b"hello, prefork"


def test_hello_example(server: Server) -> None:
    server.start(app="prefork.examples:hello").wait_ready(2)
    answer = server.ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"Hello, World!\n")


def test_factory_app(server: Server) -> None:
    server.start(app="testapps:make_pid()").wait_ready(2)
    assert server.ask_pid() in server.worker_pids()


def test_handler_gets_peer_address(server: Server) -> None:
    server.start(app="testapps:peer").wait_ready(1)
    with socket.create_connection(server.address) as sock:
        local = sock.getsockname()
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1000).decode().strip() == repr(local)


def test_connections_spread_over_workers(server: Server) -> None:
    server.start(app="testapps:slow", workers=3).wait_ready(3)
    # Three connections held open at once must be served by three different workers.
    socks = [socket.create_connection(server.address) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"1.5")
    pids = {int(sock.recv(100)) for sock in socks}
    for sock in socks:
        sock.close()
    assert pids == server.worker_pids()


def test_handler_exception_is_logged_and_worker_survives(server: Server) -> None:
    server.start(app="testapps:crash", workers=1).wait_ready(1)
    before = int(request(server.address, b"ok"))
    assert request(server.address, b"boom") == b""
    wait_for(lambda: "handler exploded on purpose" in server.log(), what="traceback in log")
    assert "Traceback" in server.log() and "handler failed on connection from 127.0.0.1:" in server.log()
    assert int(request(server.address, b"ok")) == before


def test_unix_socket_removed_at_exit(server: Server, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server.start("--bind", f"unix:{path}", bind=False).wait_ready(2)
    assert int(request(path)) in server.worker_pids()
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert not os.path.exists(path)


def test_stale_unix_socket_is_replaced(server: Server, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a killed server leaves
    server.start("--bind", f"unix:{path}", bind=False).wait_ready(2)
    assert int(request(path)) in server.worker_pids()


def test_live_unix_socket_is_not_stolen(server_factory, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    first = server_factory().start("--bind", f"unix:{path}", bind=False).wait_ready(2)
    second = server_factory().start("--bind", f"unix:{path}", bind=False)
    assert second.wait_exit() == 1
    assert "another server is listening" in second.log()
    assert int(request(path)) in first.worker_pids()


def test_ipv6_loopback(server: Server) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port("::1")
    server.start("--bind", f"[::1]:{port}", bind=False).wait_ready(2)
    assert int(request(("::1", port))) in server.worker_pids()


def test_multiple_binds(server: Server, tmp_path: Path) -> None:
    path = str(tmp_path / "m.sock")
    port2 = free_port()
    server.start("--bind", f"unix:{path}", "--bind", f"127.0.0.1:{port2}", workers=2).wait_ready(2)
    pids = server.worker_pids()
    for _ in range(5):
        assert server.ask_pid() in pids
        assert int(request(("127.0.0.1", port2))) in pids
        assert int(request(path)) in pids


def test_multiple_binds_take_turns_when_idle(server: Server, tmp_path: Path) -> None:
    """With several listeners (epoll, EPOLLEXCLUSIVE), one client at a time still reaches every worker.

    The kernel wakes the first idle waiter in a listener's wait queue, and that order
    never changes by itself: without the workers moving to its back now and then,
    one worker would serve every one of these connections.
    """
    server.start("--bind", f"unix:{tmp_path / 'm.sock'}", workers=4).wait_ready(4)
    served = {server.ask_pid() for _ in range(400)}
    assert served == server.worker_pids()


def test_inherited_fd_bind(server: Server) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    os.set_inheritable(fd, True)
    argv = [sys.executable, "-m", "prefork", "run", "-w", "1", "--bind", f"fd://{fd}", "testapps:pid"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}")
    with open(server.log_path, "wb") as err:
        proc = subprocess.Popen(argv, stderr=err, env=env, pass_fds=(fd,), start_new_session=True)
    listener.close()
    try:
        wait_for(lambda: "booted" in server.log_path.read_text(), what="boot")
        assert int(request(("127.0.0.1", port))) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_pid_file_and_titles(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "prefork.pid"
    server.start("--pid", str(pidfile), "--name", "svc").wait_ready(2)
    assert int(pidfile.read_text()) == server.pid
    assert psutil.Process(server.pid).cmdline()[0].startswith("prefork: master [svc]")
    for worker in server.workers():
        assert worker.cmdline()[0].startswith("prefork: worker [svc] #")
    # setproctitle must not clobber the environment block (SPT_NOENV): ps e / /proc/PID/environ stay readable.
    assert psutil.Process(server.pid).environ().get("PYTHONPATH", "").startswith(str(ROOT / "tests"))
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert not pidfile.exists()


# --- signals ---


def test_term_is_graceful_and_serves_queued_connections(server: Server) -> None:
    server.start(app="testapps:slow", workers=1).wait_ready(1)
    busy = socket.create_connection(server.address)
    busy.sendall(b"1.0")
    # This one waits in the kernel's queue behind the busy worker.
    queued = socket.create_connection(server.address)
    queued.sendall(b"0")
    time.sleep(0.2)  # let the first request reach the handler (the assertion below does not depend on it)
    server.signal(signal.SIGTERM)
    assert busy.recv(100).strip().isdigit()
    assert queued.recv(100).strip().isdigit(), "a connection queued before TERM must be served"
    assert server.wait_exit() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=2)


def test_term_kills_workers_after_graceful_timeout(server: Server) -> None:
    server.start("--graceful-timeout", "1", app="testapps:slow", workers=1).wait_ready(1)
    busy = socket.create_connection(server.address)
    busy.sendall(b"30")
    wait_for(lambda: any(p.cpu_times() for p in server.workers()))
    time.sleep(0.2)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert time.monotonic() - started < 10
    assert "killing it" in server.log()
    busy.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_int_quit_fast_stop(server: Server, sig: int) -> None:
    server.start(app="testapps:slow", workers=2).wait_ready(2)
    busy = socket.create_connection(server.address)
    busy.sendall(b"30")
    time.sleep(0.2)
    workers = server.workers()
    started = time.monotonic()
    server.signal(sig)
    assert server.wait_exit() == 0
    assert time.monotonic() - started < 3  # "within a second" on a quiet machine; CI is shared
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    busy.close()


def test_second_term_makes_stop_fast(server: Server) -> None:
    server.start(app="testapps:slow", workers=1).wait_ready(1)
    busy = socket.create_connection(server.address)
    busy.sendall(b"30")
    time.sleep(0.3)
    server.signal(signal.SIGTERM)
    wait_for(lambda: "graceful stop" in server.log())
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=5) == 0
    assert "stopping fast" in server.log()
    busy.close()


def test_hup_replaces_workers_keeps_master_and_socket(server: Server) -> None:
    server.start(workers=2).wait_ready(2)
    old = server.worker_pids()
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.serving_pids() and not (server.worker_pids() & old) and len(server.worker_pids()) == 2,
             what="new generation only")
    assert server.proc is not None and server.proc.poll() is None
    assert server.ask_pid() in server.worker_pids()
    assert "gen 2" in " ".join(p.cmdline()[0] for p in server.workers())


def test_ttin_ttou(server: Server) -> None:
    server.start(workers=2).wait_ready(2)
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.serving_pids()) == 3, what="3 workers")
    for _ in range(3):
        server.signal(signal.SIGTTOU)
        time.sleep(0.1)
    wait_for(lambda: len(server.worker_pids()) == 1, what="1 worker (never below 1)")
    server.signal(signal.SIGTTOU)
    time.sleep(0.3)
    assert len(server.worker_pids()) == 1


def test_usr1_reopens_log_file(server: Server, tmp_path: Path) -> None:
    logfile = tmp_path / "app.log"
    server.start("--log-file", str(logfile), app="testapps:crash", workers=1)
    wait_for(lambda: logfile.exists() and "booted" in logfile.read_text(), what="boot in log file")
    rotated = tmp_path / "app.log.1"
    logfile.rename(rotated)
    server.signal(signal.SIGUSR1)
    wait_for(lambda: logfile.exists() and "reopened" in logfile.read_text(), what="master reopened")
    time.sleep(0.2)
    request(server.address, b"boom")  # the worker logs the traceback to the new file
    wait_for(lambda: "handler exploded" in logfile.read_text(), what="worker writes to the new file")
    assert "handler exploded" not in rotated.read_text()


def test_killed_worker_is_replaced(server: Server) -> None:
    server.start(workers=2).wait_ready(2)
    victim = min(server.worker_pids())
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.serving_pids()) == 2, what="replacement")
    assert "killed by SIGKILL" in server.log()


def test_no_orphans_when_master_is_killed(server: Server) -> None:
    server.start(workers=3).wait_ready(3)
    workers = server.workers()
    os.kill(server.pid, signal.SIGKILL)
    server.wait_exit()

    def all_gone() -> bool:
        return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)

    wait_for(all_gone, timeout=3, what="workers exit after the master dies")


def test_idle_master_and_workers_use_no_cpu(server: Server) -> None:
    server.start(workers=2).wait_ready(2)
    procs = [psutil.Process(server.pid), *server.workers()]
    before = [p.cpu_times() for p in procs]
    switches = psutil.Process(server.pid).num_ctx_switches().voluntary
    time.sleep(2)
    after = [p.cpu_times() for p in procs]
    for b, a in zip(before, after, strict=True):
        assert (a.user + a.system) - (b.user + b.system) < 0.05
    # Idle, the master sleeps until a signal or the next possible --timeout overrun (30 s away).
    assert psutil.Process(server.pid).num_ctx_switches().voluntary - switches <= 2


# --- errors a user will meet ---


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env["PYTHONPATH"] = f"{ROOT / 'tests'}:{ROOT}"
    return subprocess.run([sys.executable, "-m", "prefork", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def test_no_app_names_the_examples() -> None:
    result = run_cli("run")
    assert result.returncode == 2
    assert "prefork.examples:echo" in result.stderr and "prefork.examples:hello" in result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--workers", "0"], "--workers"),
    (["--workers", "many"], "'many'"),
    (["--bind", "nonsense"], "'nonsense'"),
    (["--bind", "127.0.0.1:99999"], "99999"),
    (["--log-level", "loud"], "'loud'"),
    (["--graceful-timeout", "-1"], "--graceful-timeout"),
])
def test_bad_option_values_exit_2(args: list[str], needle: str) -> None:
    result = run_cli("run", *args, "testapps:pid")
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("app", "needle"), [
    ("nosuchmodule:app", "no module named 'nosuchmodule'"),
    ("testapps:nosuchattr", "has no attribute 'nosuchattr'"),
    ("testapps:not_callable", "is not callable"),
])
def test_app_import_errors_exit_4(app: str, needle: str) -> None:
    port = free_port()
    result = run_cli("run", "-w", "2", "-b", f"127.0.0.1:{port}", app)
    assert result.returncode == 4, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_address_in_use_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("run", "-b", f"127.0.0.1:{port}", "testapps:pid")
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_failing_at_boot_exit_3(tmp_path: Path) -> None:
    (tmp_path / "bootfail.py").write_text("import os\ndef handler(conn, addr): pass\nos._exit(7)\n")
    started = time.monotonic()
    result = run_cli("run", "-w", "2", "-b", f"127.0.0.1:{free_port()}", "--chdir", str(tmp_path), "bootfail:handler")
    assert result.returncode == 3, result.stderr
    assert "failed to boot 5 times in a row" in result.stderr
    assert time.monotonic() - started < 20  # backed off, but bounded


def test_python_dash_m_and_console_script_agree() -> None:
    import shutil

    script = shutil.which("prefork")
    if script is None:
        pytest.skip("console script not installed")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "prefork" in result.stdout
    assert run_cli("--version").stdout == result.stdout


def test_unwritable_pid_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("run", "-b", f"127.0.0.1:{free_port()}", "--pid", str(tmp_path / "no" / "such" / "p.pid"),
                     "testapps:pid")
    assert result.returncode == 2, result.stderr
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr
