"""Issue 15: hostile input and a hostile worker user get nowhere (log, pid and socket files; addresses).

Every scenario runs the real command; a test that needs root (to switch users) is skipped without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, TESTS, Server, free_port, request, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork.access import ClientIP, client_ip
from prefork.errors import NotRunningError
from prefork.pidfile import PID_MAX, pid_in_file

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs the tests to run as root")
NOBODY = pwd.getpwnam("nobody")


@contextlib.contextmanager
def nobodys_dir() -> Iterator[Path]:
    """A directory the workers' user owns, so it may rename and create anything in it."""
    path = Path(tempfile.mkdtemp(prefix="prefork-hostile-"))
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


@contextlib.contextmanager
def root_only_file() -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="prefork-secret-")
    os.write(fd, b"root's secret\n")
    os.close(fd)
    os.chmod(name, 0o600)
    try:
        yield Path(name)
    finally:
        os.unlink(name)


def as_nobody(action: Callable[[], object]) -> None:
    """Do ``action`` in a forked child that has become nobody (the attacker)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([])
            os.setresgid(NOBODY.pw_gid, NOBODY.pw_gid, NOBODY.pw_gid)
            os.setresuid(NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_uid)
            action()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def prefork(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "prefork", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def unchanged(secret: Path) -> bool:
    st = secret.stat()
    return (st.st_uid, stat.S_IMODE(st.st_mode), secret.read_bytes()) == (0, 0o600, b"root's secret\n")


# --- the log file (defect 1) ---


@needs_root
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGHUP])
def test_a_symlink_swapped_in_for_the_log_is_neither_followed_nor_chowned(server: Server, sig: int) -> None:
    with nobodys_dir() as logs, root_only_file() as secret:
        log_file, moved = logs / "a.log", logs / "a.log.1"
        server.start("--user", "nobody", "--log-file", str(log_file), app="testapps:crash", workers=1)
        wait_for(lambda: log_file.exists() and "booted" in log_file.read_text(), what="boot in the log file")
        assert log_file.stat().st_uid == 0  # never handed to the workers' user
        def swap() -> None:
            os.rename(log_file, moved)
            os.symlink(secret, log_file)

        as_nobody(swap)
        server.signal(sig)
        wait_for(lambda: "cannot reopen the log file" in moved.read_text(), what="the refusal in the old file")
        assert "it is a symbolic link, not a regular file" in moved.read_text()
        request(server.address, b"boom")  # the worker still logs, through the master, to the old file
        wait_for(lambda: "handler exploded on purpose" in moved.read_text(), what="the worker's line")
        assert unchanged(secret)
        assert os.path.islink(log_file)
        assert server.ask(b"x").strip().isdigit()  # still serving
        assert moved.read_text().count("cannot reopen the log file") == 1


@needs_root
def test_workers_of_another_user_write_the_reopened_file_which_stays_roots(server: Server) -> None:
    with nobodys_dir() as logs:
        log_file = logs / "prefork.log"
        server.start("--user", "nobody", "--log-file", str(log_file), app="testapps:crash", workers=1)
        wait_for(lambda: log_file.exists() and "booted" in log_file.read_text(), what="boot in the log file")
        worker = server.workers()[0].pid
        log_file.rename(logs / "prefork.log.1")  # logrotate
        server.signal(signal.SIGUSR1)
        wait_for(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), what="reopen")
        request(server.address, b"boom")  # the same worker (not replaced) logs the handler's traceback
        wait_for(lambda: "handler exploded on purpose" in log_file.read_text(), what="worker writes new file")
        assert f"[{worker}]" in log_file.read_text()
        assert log_file.stat().st_uid == 0
        # The workers hold no descriptor of the log file at all (they could truncate it).
        held = {os.path.realpath(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")}
        assert not {str(log_file), str(logs / "prefork.log.1")} & held


def test_a_fifo_at_the_log_path_is_refused_at_start(tmp_path: Path) -> None:
    fifo = tmp_path / "log"
    os.mkfifo(fifo)
    result = prefork("run", "--log-file", str(fifo), "-b", f"127.0.0.1:{free_port()}", "testapps:pid")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: log_file: cannot open {str(fifo)!r}: it is a FIFO, not a regular file (refused)"]


def test_a_hard_link_or_device_at_the_log_path_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    os.link(other, tmp_path / "log")
    result = prefork("run", "--log-file", str(tmp_path / "log"), "-b", f"127.0.0.1:{free_port()}", "testapps:pid")
    assert result.returncode == 2 and "it has 2 hard links" in result.stderr, result.stderr
    result = prefork("run", "--log-file", "/dev/zero", "-b", f"127.0.0.1:{free_port()}", "testapps:pid")
    assert result.returncode == 2 and "it is a character device" in result.stderr, result.stderr


def test_a_fifo_swapped_in_at_reopen_is_refused_and_the_master_goes_on(server: Server, tmp_path: Path) -> None:
    log_file, moved = tmp_path / "a.log", tmp_path / "a.log.1"
    server.start("--log-file", str(log_file), workers=1)
    wait_for(lambda: log_file.exists() and "booted" in log_file.read_text(), what="boot in the log file")
    log_file.rename(moved)
    os.mkfifo(log_file)
    server.signal(signal.SIGUSR1)
    wait_for(lambda: "cannot reopen the log file" in moved.read_text(), what="the refusal")
    assert "it is a FIFO, not a regular file" in moved.read_text()
    server.signal(signal.SIGTTIN)  # the loop goes on
    wait_for(lambda: "TTIN: 2 workers" in moved.read_text(), what="the master's next line")
    assert server.ask().strip().isdigit()
    log_file.unlink()
    server.signal(signal.SIGUSR1)  # and once the path is sane again, it is reopened
    wait_for(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), what="reopened")


# --- the --wsgi access log: opened by the master, as safely as the log file ---


def access_log_refusal(path: Path) -> str:
    return f"access_log: cannot open {str(path)!r}: it is a symbolic link, not a regular file (refused)"


def test_a_symlink_at_the_access_log_path_is_refused_at_start_and_by_check(tmp_path: Path) -> None:
    secret, link = tmp_path / "secret", tmp_path / "access.log"
    secret.write_text("")
    link.symlink_to(secret)
    for command in ("run", "check"):
        result = prefork(command, "--wsgi", "--access-log", str(link), "-b", f"127.0.0.1:{free_port()}",
                         "wsgiapps:hello")
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.strip().splitlines()[-1] == f"Error: {access_log_refusal(link)}", result.stderr
    assert secret.read_text() == ""
    missing = tmp_path / "missing" / "access.log"
    result = prefork("run", "--wsgi", "--access-log", str(missing), "-b", f"127.0.0.1:{free_port()}", "wsgiapps:hello")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: access_log: cannot open {str(missing)!r}: No such file or directory"], result.stderr
    fine = tmp_path / "fine.log"
    result = prefork("check", "--wsgi", "--access-log", str(fine), "-b", f"127.0.0.1:{free_port()}", "wsgiapps:hello")
    assert result.returncode == 0, result.stderr
    assert not fine.exists()  # a check creates nothing


def test_a_hup_to_an_access_log_behind_a_symlink_is_refused_and_the_old_generation_serves(
        server: Server, tmp_path: Path) -> None:
    config, first, link = tmp_path / "app.toml", tmp_path / "first.log", tmp_path / "evil.log"
    config.write_text(f'workers = 1\nwsgi = true\naccess_log = "{first}"\n')
    server.start("-c", str(config), app="wsgiapps:hello", workers=None).wait_ready(1)
    get = b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert server.ask(get).startswith(b"HTTP/1.1 200")
    wait_for(lambda: first.exists() and "GET /one" in first.read_text(), what="the first line")
    (tmp_path / "secret").write_text("")
    link.symlink_to(tmp_path / "secret")
    config.write_text(f'workers = 1\nwsgi = true\naccess_log = "{link}"\n')
    serving = server.serving_pids()
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log(), what=f"the refusal; log:\n{server.log()}")
    assert f"reload refused, keeping the running configuration: {access_log_refusal(link)}" in server.log()
    assert server.serving_pids() == serving and "starting generation 2" not in server.log()
    assert server.ask(get.replace(b"/one", b"/two")).startswith(b"HTTP/1.1 200")
    wait_for(lambda: "GET /two" in first.read_text(), what="the old generation's line in the old file")
    assert (tmp_path / "secret").read_text() == ""


def test_a_symlink_swapped_in_for_the_access_log_is_followed_by_neither_master_nor_workers(
        server: Server, tmp_path: Path) -> None:
    access, moved, secret = tmp_path / "access.log", tmp_path / "access.log.1", tmp_path / "secret"
    secret.write_text("")
    server.start("--wsgi", "--access-log", str(access), app="wsgiapps:hello", workers=1).wait_ready(1)
    get = b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert server.ask(get).startswith(b"HTTP/1.1 200")
    wait_for(lambda: access.exists() and "GET /one" in access.read_text(), what="the first line")
    access.rename(moved)
    access.symlink_to(secret)
    server.signal(signal.SIGUSR1)
    wait_for(lambda: "USR1: log files reopened" in server.log(), what="the reopen")
    assert (f"cannot reopen the access log {access}: it is a symbolic link, not a regular file (refused)"
            in server.log())
    said = f"cannot open the access log {access} as uid 0: it is a symbolic link, not a regular file (refused)"
    wait_for(lambda: server.ask(get.replace(b"/one", b"/two")) and said in server.log(), 20, interval=0.2,
             what=f"the worker's refusal; log:\n{server.log()}")
    wait_for(lambda: "GET /two" in moved.read_text(), what="the lines in the old file")
    assert secret.read_text() == "" and server.log().count(said) == 1


# --- the pid file: locked for the master's life (defect 2) ---


def holders_of_lock(path: Path) -> set[int]:
    """Pids holding a flock on ``path`` (from /proc/locks)."""
    inode = path.stat().st_ino
    pids = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            pids.add(int(fields[4]))
    return pids


def test_a_second_server_refuses_a_live_pid_file(server_factory: Callable[[], Server], tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    first = server_factory().start("--pid", str(pidfile), workers=1).wait_ready(1)
    second = server_factory().start("--pid", str(pidfile), workers=1)
    assert second.wait_exit() == 1
    errors = [line for line in second.log().splitlines() if "Error" in line or "Traceback" in line]
    assert errors == [f"Error: pid file {pidfile} is held by a running server (pid {first.pid}); "
                      "stop it first or give another --pid"], second.log()
    # The first server is still fully managed through its files.
    assert pidfile.read_text() == f"{first.pid}\n"
    assert holders_of_lock(pidfile) == {first.pid}
    result = prefork("status", "--pid", str(pidfile))
    assert result.returncode == 0, result.stderr
    result = prefork("stop", "--pid", str(pidfile))
    assert result.returncode == 0, result.stderr
    assert first.wait_exit() == 0
    assert not pidfile.exists() and not Path(f"{pidfile}.ctl").exists()


@pytest.mark.parametrize("content", [b"", b"999999\n", b"garbage that is much longer than any pid could be\n"])
def test_a_stale_pid_file_is_replaced(server: Server, tmp_path: Path, content: bytes) -> None:
    pidfile = tmp_path / "p.pid"
    pidfile.write_bytes(content)
    server.start("--pid", str(pidfile), workers=1).wait_ready(1)
    assert pidfile.read_text() == f"{server.pid}\n"  # rewritten in place, nothing left of the old text
    assert holders_of_lock(pidfile) == {server.pid}


def test_the_pid_file_is_readable_by_anyone_whatever_the_umask(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    server.start("--pid", str(pidfile), "--umask", "077", workers=1).wait_ready(1)
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644


def test_workers_hold_neither_the_pid_file_nor_its_lock(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    server.start("--pid", str(pidfile), workers=1).wait_ready(1)
    worker = server.workers()[0].pid
    held = {os.path.realpath(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")}
    assert str(pidfile) not in held


def test_usr2_hands_the_lock_to_the_new_master_and_back_on_failure(server_factory: Callable[[], Server],
                                                                    tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    app = tmp_path / "deploy.py"
    app.write_text("import os\ndef handler(conn, addr):\n    conn.sendall(b'%d' % os.getpid())\n")
    server = server_factory().start("--pid", str(pidfile), "--chdir", str(tmp_path), app="deploy:handler")
    server.wait_ready(2)
    app.write_text("raise ImportError('bad release')\n")
    server.signal(signal.SIGUSR2)
    wait_for(lambda: "upgrade failed" in server.log(), timeout=30, what="the upgrade to fail")
    assert pidfile.read_text() == f"{server.pid}\n" and holders_of_lock(pidfile) == {server.pid}
    app.write_text("import os\ndef handler(conn, addr):\n    conn.sendall(b'%d' % os.getpid())\n")
    server.signal(signal.SIGUSR2)
    wait_for(lambda: server.proc is not None and server.proc.poll() is not None, 30, what="the old master to retire")
    new_master = int(pidfile.read_text())
    try:
        assert new_master != server.pid and holders_of_lock(pidfile) == {new_master}
        third = server_factory().start("--pid", str(pidfile), workers=1)
        assert third.wait_exit() == 1 and f"(pid {new_master})" in third.log()
    finally:
        os.kill(new_master, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), 30, what="the new master to remove its pid file")


@needs_root
def test_a_symlink_at_the_pid_path_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    with nobodys_dir() as run_dir, root_only_file() as secret:
        pidfile = run_dir / "p.pid"
        as_nobody(lambda: pidfile.symlink_to(secret))
        result = prefork("run", "--pid", str(pidfile), "-b", f"127.0.0.1:{free_port()}", "testapps:pid")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"Error: pid: cannot write {str(pidfile)!r}: it is a symbolic link, not a regular file (refused)")
        assert unchanged(secret) and pidfile.is_symlink()


def test_check_does_not_block_on_a_fifo_pid_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p.pid")
    result = prefork("check", "--pid", str(tmp_path / "p.pid"), "-b", f"127.0.0.1:{free_port()}", "testapps:pid")
    assert result.returncode == 0, result.stderr


# --- pid file readers: never a traceback, never a hang (defect 6) ---


@pytest.mark.parametrize("command", [["status"], ["stop"], ["reload"]])
@pytest.mark.parametrize("kind", ["-1", "0", "abc", "99999999999", "empty", "fifo", "/dev/zero", "symlink", "dir"])
def test_control_commands_on_a_bad_pid_file_exit_5(tmp_path: Path, command: list[str], kind: str) -> None:
    pidfile = tmp_path / "p.pid"
    if kind == "fifo":
        os.mkfifo(pidfile)
    elif kind == "/dev/zero":
        pidfile = Path("/dev/zero")
    elif kind == "symlink":
        (tmp_path / "real").write_text(f"{os.getpid()}\n")
        pidfile.symlink_to(tmp_path / "real")
    elif kind == "dir":
        pidfile.mkdir()
    else:
        pidfile.write_text("" if kind == "empty" else f"{kind}\n")
    result = prefork(*command, "--pid", str(pidfile))
    assert result.returncode == 5, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no server running:"), result.stderr


PID_LIKE = st.one_of(
    st.binary(max_size=64),
    st.integers(min_value=-(2**40), max_value=2**40).map(lambda n: f"{n}\n".encode()),
    st.text(alphabet=" \t\n0123456789-+x", max_size=40).map(str.encode),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=PID_LIKE)
def test_pid_file_reader_fuzz(tmp_path: Path, content: bytes) -> None:
    """Whatever a pid file holds: its pid, exactly when it is a positive integer; else NotRunningError."""
    path = tmp_path / "fuzz.pid"
    path.write_bytes(content)
    text = content.strip()
    valid = len(content) <= 32 and text.isdigit() and not text.startswith(b"0") and int(text) <= PID_MAX
    try:
        pid = pid_in_file(str(path))
    except NotRunningError as exc:
        assert str(exc).startswith("no server running: pid file") and "\n" not in str(exc)
        assert not valid
    else:
        assert valid and pid == int(text) and pid > 0


# --- unix socket files: never chmod/chown through a symlink ---


@needs_root
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to hold bind() open")
def test_a_socket_file_swapped_for_a_symlink_after_bind_gets_nothing_changed(tmp_path: Path) -> None:
    """strace delays bind()'s return, so the swap lands exactly between bind and setting mode and owner."""
    with nobodys_dir() as run_dir, root_only_file() as secret:
        path = run_dir / "app.sock"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
        with open(tmp_path / "stderr", "wb") as err:
            proc = subprocess.Popen(
                ["strace", "-qq", "-o", "/dev/null", "-e", "trace=bind", "-e", "inject=bind:delay_exit=1500000",
                 sys.executable, "-m", "prefork", "run", "-w", "1", "-b", f"unix:{path}", "--unix-mode", "666",
                 "--unix-owner", "nobody:nogroup", "testapps:pid"],
                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        try:
            wait_for(lambda: path.exists(), 20, interval=0.001, what="bind() to create the socket file")

            def swap() -> None:
                os.unlink(path)
                os.symlink(secret, path)

            as_nobody(swap)
            wait_for(lambda: proc.poll() is not None or not unchanged(secret), 30, what="the server's decision")
            assert unchanged(secret)
            status = proc.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        assert status == 1, (tmp_path / "stderr").read_text()
        assert "the socket file was replaced before its owner could be set" in (tmp_path / "stderr").read_text()


# --- unix path length (defect 7) ---


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_unix_path_too_long_is_a_usage_error(tmp_path: Path, command: str) -> None:
    path = "/tmp/" + "a" * 125
    result = prefork(command, "-b", f"unix:{path}", "testapps:pid")
    assert result.returncode == 2, result.stderr
    assert "unix socket path too long (130 bytes, at most 107)" in result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(path)


# --- one address normal form: IPv4-mapped IPv6 (defect 5) ---


class DualStack:
    """A server on an inherited socket bound to [::] with IPV6_V6ONLY off: IPv4 clients arrive as ::ffff:a.b.c.d."""

    def __init__(self, tmp_path: Path, *args: str, app: str = "testapps:pid_peer", workers: int = 1) -> None:
        self.listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.listener.bind(("::", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        fd = self.listener.fileno()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
        self.log_path = tmp_path / f"dual-{self.port}.log"
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "prefork", "run", "-w", str(workers), "-b",
                                          f"fd://{fd}", *args, app], stderr=err, stdout=subprocess.DEVNULL,
                                         env=env, pass_fds=(fd,), start_new_session=True)
        wait_for(lambda: self.log().count("booted") >= workers, 30, what=f"boot; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ask(self, source: str = "127.0.0.1", payload: bytes = b"") -> str:
        """The answer to an IPv4 client bound to ``source``; "" when refused."""
        with socket.socket(socket.AF_INET) as sock:
            sock.settimeout(20)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", self.port))
            try:
                if payload:
                    sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                return b"".join(iter(lambda: sock.recv(65536), b"")).decode().strip()
            except OSError:
                return ""

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.listener.close()


@pytest.fixture
def dual_stack(tmp_path: Path) -> Iterator[Callable[..., DualStack]]:
    made: list[DualStack] = []

    def make(*args: str, **kwargs: object) -> DualStack:
        made.append(DualStack(tmp_path, *args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.mark.parametrize("rules, refused, served", [
    (["--deny", "::ffff:127.0.0.1"], "127.0.0.1", "127.0.0.2"),
    (["--deny", "::ffff:0:0/96"], "127.0.0.1", None),
    (["--deny", "::ffff:127.0.0.0/104"], "127.0.0.2", None),
    (["--allow", "::ffff:127.0.0.1"], "127.0.0.2", "127.0.0.1"),
    (["--deny", "127.0.0.1"], "127.0.0.1", "127.0.0.3"),
])
def test_access_rules_see_mapped_peers_and_rules_as_ipv4(dual_stack: Callable[..., DualStack], rules: list[str],
                                                         refused: str, served: str | None) -> None:
    server = dual_stack(*rules)
    assert server.ask(refused) == ""
    if served is not None:
        _pid, peer = server.ask(served).split(" ", 1)
        assert peer.startswith(f"('::ffff:{served}'")  # the handler still gets the address as accepted
    wait_for(lambda: re.search(rf"refused connection from {re.escape(refused)}:\d+: ", server.log()),
             what="the refusal, with the peer in its IPv4 form")


def test_max_per_source_counts_a_mapped_peer_as_its_ipv4_host(dual_stack: Callable[..., DualStack]) -> None:
    port = free_port()
    server = dual_stack("--bind", f"127.0.0.1:{port}", "--max-per-source", "1", app="testapps:hold", workers=3)
    held = socket.create_connection(("127.0.0.1", server.port), timeout=20, source_address=("127.0.0.2", 0))
    try:
        assert held.recv(100).strip().isdigit()  # busy with 127.0.0.2 arriving as ::ffff:127.0.0.2
        with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=("127.0.0.2", 0)) as second:
            assert second.recv(100) == b""  # the same host over IPv4: refused
        with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=("127.0.0.3", 0)) as other:
            assert other.recv(100).strip().isdigit()
    finally:
        held.close()


def test_forwarded_allow_ips_trusts_a_mapped_proxy(dual_stack: Callable[..., DualStack]) -> None:
    server = dual_stack("--wsgi", "--forwarded-allow-ips", "::ffff:127.0.0.1", app="wsgiapps:show_environ")
    answer = server.ask(payload=b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.9.8.7\r\nConnection: close\r\n\r\n")
    assert json.loads(answer.partition("\r\n\r\n")[2])["REMOTE_ADDR"] == "10.9.8.7", answer


def test_proxy_allow_trusts_a_mapped_load_balancer(dual_stack: Callable[..., DualStack]) -> None:
    server = dual_stack("--proxy-protocol", "--proxy-allow", "::ffff:127.0.0.1")
    answer = server.ask(payload=b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n")
    assert answer.split(" ", 1)[1] == "('10.1.2.3', 5555)", server.log()


# --- a handler that raises BaseException or calls os._exit (defect 8) ---


@pytest.mark.parametrize("how, raised", [(b"exit", "SystemExit(3)"), (b"interrupt", "KeyboardInterrupt()")])
def test_a_handler_raising_base_exception_is_named_and_its_worker_replaced(server: Server, how: bytes,
                                                                          raised: str) -> None:
    server.start(app="testapps:leave", workers=1).wait_ready(1)
    (old,) = server.worker_pids()
    assert request(server.address, how) == b""
    wait_for(lambda: server.serving_pids() - {old}, 20, what="a replacement worker")
    log = server.log()
    lines = [line for line in log.splitlines() if f"pid {old}" in line or f"[{old}]" in line]
    assert any(f"handler testapps:leave raised {raised} on connection from 127.0.0.1:" in line
               and "this worker exits and is replaced" in line for line in lines), log
    assert f"worker 0 gen 1 (pid {old}) died (exit status 1); replacing it" in log
    assert "Traceback" not in log and "exit status 0" not in log
    assert request(server.address, b"hello").strip().isdigit()


def test_os_exit_in_a_handler_gets_a_clear_line_from_the_master(server: Server) -> None:
    server.start(app="testapps:leave", workers=1).wait_ready(1)
    (old,) = server.worker_pids()
    assert request(server.address, b"_exit") == b""
    wait_for(lambda: server.serving_pids() - {old}, 20, what="a replacement worker")
    assert re.search(rf"worker 0 gen 1 \(pid {old}\) died \(exit status 0 while serving a connection from "
                     r"127\.0\.0\.1:\d+, in the handler\); replacing it", server.log()), server.log()


def test_normal_network_and_peer_host() -> None:
    import ipaddress

    from prefork.access import compile_rules, in_any, normal_network
    from prefork.peer import peer_host

    def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(text)

    assert normal_network(net("::ffff:10.0.0.0/104")) == net("10.0.0.0/8")
    assert normal_network(net("::ffff:0:0/96")) == net("0.0.0.0/0")
    assert normal_network(net("::ffff:192.0.2.7")) == net("192.0.2.7/32")
    assert normal_network(net("::/0")) == net("::/0")  # wider: about IPv6 clients only
    assert normal_network(net("2001:db8::/32")) == net("2001:db8::/32")
    assert in_any(access_ip("10.1.2.3"), compile_rules((net("::ffff:10.0.0.0/104"),)))
    assert in_any(access_ip("::ffff:10.1.2.3"), compile_rules((net("10.0.0.0/8"),)))
    assert not in_any(access_ip("::ffff:10.1.2.3"), compile_rules((net("::/0"),)))
    assert peer_host("::ffff:10.1.2.3") == "10.1.2.3"
    assert peer_host("2001:db8::1") == "2001:db8::1" and peer_host("10.1.2.3") == "10.1.2.3"


def access_ip(text: str) -> ClientIP:
    ip = client_ip((text, 0))
    assert ip is not None
    return ip
