"""Issue 4: --user/--group, --umask, --preload and --daemon, on the real command."""

from __future__ import annotations

import contextlib

# Imported before a child becomes nobody: root's own Python installation may be unreadable to it.
import encodings.idna  # noqa: F401
import grp
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, TESTS, Server, free_port, request, wait_for

import prefork.check
import prefork.master  # noqa: F401
from prefork import privileges
from prefork.cli import main as prefork_main
from prefork.errors import ConfigError
from prefork.pidfile import read_pid

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs the tests to run as root")
NOBODY = pwd.getpwnam("nobody")


def supplementary_groups(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Groups:"):
            return [int(g) for g in line.split()[1:]]
    raise AssertionError("no Groups line")


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="prefork-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


# --- --user / --group ---


@needs_root
def test_user_nobody_gives_workers_that_uid_and_no_root_ids(server: Server) -> None:
    server.start("--user", "nobody", workers=2).wait_ready(2)
    assert psutil.Process(server.pid).uids().real == 0  # the master keeps root (to bind again on HUP)
    for worker in server.workers():
        assert tuple(worker.uids()) == (NOBODY.pw_uid,) * 3
        assert tuple(worker.gids()) == (NOBODY.pw_gid,) * 3
        assert 0 not in supplementary_groups(worker.pid)
        assert set(supplementary_groups(worker.pid)) == set(os.getgrouplist("nobody", NOBODY.pw_gid))
    assert server.ask_pid() in server.worker_pids()


GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
CANNOT_OPEN = "cannot open the access log"


def get(server: Server, target: str = "/") -> None:
    answer = request(server.address, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
                     timeout=10)
    assert answer.startswith(b"HTTP/1.1 200"), answer


def lines_of(path: Path, target: str) -> int:
    """How many access log lines in ``path`` are for ``GET target``."""
    return path.read_text().count(f'"GET {target} HTTP/1.1"') if path.exists() else 0


def get_until_logged(server: Server, path: Path, target: str, timeout: float = 20.0) -> None:
    """Request ``target`` until its line is in ``path`` (a worker checks for a rotation once a second)."""
    wait_for(lambda: get(server, target) or lines_of(path, target) > 0, timeout, interval=0.2,
             what=f"a line for {target} in {path}; log:\n{server.log()}")


def start_nobody_with_access_log(server: Server, access: Path, *args: str) -> None:
    # --preload: nobody cannot read this interpreter's standard library under /root to import the app.
    server.start("--user", "nobody", "--preload", "--wsgi", "--access-log", str(access), *args,
                 app="wsgiapps:hello", workers=1)
    server.wait_ready(1)


@needs_root
def test_workers_of_another_user_write_an_access_log_in_a_directory_only_root_can_enter(
        server: Server, tmp_path: Path) -> None:
    """The master opens --access-log before any --user: nobody writes a root-owned file it could not create,
    and logrotate's copytruncate needs no signal."""
    access = tmp_path / "private" / "access.log"
    access.parent.mkdir(mode=0o700)  # root's: nobody can neither create nor even see the file
    start_nobody_with_access_log(server, access)
    for _ in range(3):
        get(server)
    wait_for(lambda: lines_of(access, "/") == 3, what=f"3 lines in the access log; log:\n{server.log()}")
    assert access.stat().st_uid == 0 and stat.S_IMODE(access.stat().st_mode) == 0o644  # never chowned
    assert CANNOT_OPEN not in server.log()
    (worker,) = server.workers()
    held = {os.path.realpath(f"/proc/{worker.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{worker.pid}/fd")}
    assert str(access) in held  # inherited from the master
    # copytruncate: the same file, emptied; O_APPEND writes go on at its new end.
    (access.parent / "access.log.1").write_bytes(access.read_bytes())
    os.truncate(access, 0)
    get(server, "/after-truncate")
    wait_for(lambda: access.read_text().startswith("127.0.0.1 ") and lines_of(access, "/after-truncate") == 1,
             what=f"the next line at the start of the truncated file: {access.read_text()!r}")
    assert lines_of(access, "/") == 0


@needs_root
def test_after_rename_and_usr1_workers_that_cannot_open_the_new_file_say_so_once_and_keep_the_old(
        server: Server) -> None:
    with shared_dir() as logs:  # root's, 0755: nobody may look, not create
        access, moved = logs / "access.log", logs / "access.log.1"
        start_nobody_with_access_log(server, access)
        get_until_logged(server, access, "/before")
        worker = server.worker_pids()
        access.rename(moved)  # logrotate without copytruncate
        server.signal(signal.SIGUSR1)
        wait_for(lambda: "USR1: log files reopened" in server.log() and access.exists(), what="the master's reopen")
        assert access.stat().st_uid == 0 and access.read_text() == ""  # the master's new file
        said = f"{CANNOT_OPEN} {access} as uid {NOBODY.pw_uid}: Permission denied; writing to the old file"
        wait_for(lambda: get(server, "/after") or said in server.log(), 20, interval=0.2,
                 what=f"the worker's refusal; log:\n{server.log()}")
        later = time.monotonic() + 2.5  # requests through two more checks (once a second): they try again
        wait_for(lambda: get(server, "/later") or time.monotonic() > later, interval=0.2, what="2.5 s of requests")
        wait_for(lambda: lines_of(moved, "/later") >= 2, what="the later lines")
        assert lines_of(moved, "/after") >= 1 and access.read_text() == ""  # all in the file it has
        assert server.log().count(f"{CANNOT_OPEN} {access}") == 1, server.log()
        assert server.worker_pids() == worker


@needs_root
def test_after_rename_and_usr1_workers_switch_to_a_file_logrotate_created_for_them(server: Server) -> None:
    with shared_dir() as logs:
        access, moved = logs / "access.log", logs / "access.log.1"
        start_nobody_with_access_log(server, access)
        get_until_logged(server, access, "/before")
        worker = server.worker_pids()
        access.rename(moved)
        access.touch(mode=0o640)  # logrotate's "create 0640 nobody nogroup"
        os.chown(access, NOBODY.pw_uid, NOBODY.pw_gid)
        server.signal(signal.SIGUSR1)
        wait_for(lambda: "USR1: log files reopened" in server.log(), what="the master's reopen")
        get_until_logged(server, access, "/after")
        assert lines_of(moved, "/before") == 1
        assert access.stat().st_uid == NOBODY.pw_uid  # the file as logrotate made it
        assert CANNOT_OPEN not in server.log(), server.log()
        assert server.worker_pids() == worker  # the same worker switched itself


@needs_root
def test_a_hup_gives_the_new_generation_a_fresh_access_log_in_a_directory_only_root_can_enter(
        server: Server, tmp_path: Path) -> None:
    """logrotate's ``postrotate systemctl reload``: rename, HUP; the new workers write to a file the master
    created, while the old ones finish on the moved one."""
    access = tmp_path / "private" / "access.log"
    access.parent.mkdir(mode=0o700)
    moved = access.parent / "access.log.1"
    start_nobody_with_access_log(server, access)
    get_until_logged(server, access, "/before")
    old = server.worker_pids()
    access.rename(moved)
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload done" in server.log() and server.serving_pids() and not server.serving_pids() & old,
             30, what=f"generation 2 serving; log:\n{server.log()}")
    get_until_logged(server, access, "/after")
    assert access.stat().st_uid == 0
    assert lines_of(moved, "/before") == 1 and lines_of(moved, "/after") == 0
    assert CANNOT_OPEN not in server.log(), server.log()


@needs_root
def test_group_alone_sets_gid_and_drops_root_groups(server: Server) -> None:
    group = grp.getgrgid(NOBODY.pw_gid).gr_name  # nogroup on Debian, nobody elsewhere
    server.start("--group", group, workers=1).wait_ready(1)
    (worker,) = server.workers()
    assert tuple(worker.gids()) == (NOBODY.pw_gid,) * 3
    assert supplementary_groups(worker.pid) == [NOBODY.pw_gid]


def run_cli_as_nobody(args: list[str], stderr: Path) -> int:
    """Run the prefork command in a forked child that has become nobody; its exit status."""
    with open(stderr, "wb") as err:
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                sys.stderr = open(err.fileno(), "w", buffering=1, closefd=False)  # noqa: SIM115 - pytest's is captured
                os.setgroups([])
                os.setresgid(NOBODY.pw_gid, NOBODY.pw_gid, NOBODY.pw_gid)
                os.setresuid(NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_uid)
                prefork_main(args)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@needs_root
@pytest.mark.parametrize("command", ["run", "check"])
def test_switching_user_needs_root(tmp_path: Path, command: str) -> None:
    stderr = tmp_path / "stderr"
    status = run_cli_as_nobody([command, "--user", "root", "-b", f"127.0.0.1:{free_port()}", "testapps:pid"], stderr)
    assert status == 2, stderr.read_text()
    assert "switching needs the master to start as root" in stderr.read_text()


def test_verify_dropped_refuses_remaining_root_ids() -> None:
    if os.geteuid() != 0:
        pytest.skip("meaningful only as root")
    with pytest.raises(privileges.PrivilegeError, match=r"uids .* remain"):
        privileges.verify_dropped(privileges.Identity(NOBODY.pw_uid, NOBODY.pw_gid, (NOBODY.pw_gid,), "nobody"))


def test_resolve_identity() -> None:
    assert privileges.resolve(None, None) is None
    nobody = privileges.resolve("nobody", None)
    assert nobody is not None and (nobody.uid, nobody.gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    by_uid = privileges.resolve(str(NOBODY.pw_uid), "0")
    assert by_uid is not None and (by_uid.uid, by_uid.gid, by_uid.name) == (NOBODY.pw_uid, 0, "nobody")
    unnamed = privileges.resolve("54321", "54321")  # a uid without a passwd entry (containers)
    assert unnamed is not None and (unnamed.uid, unnamed.gid, unnamed.groups) == (54321, 54321, ())
    with pytest.raises(ConfigError, match="user 54321 has no passwd entry, so no primary group: give --group too"):
        privileges.resolve("54321", None)  # would keep the master's gid


# --- --umask ---


def test_umask_governs_unix_socket_and_log_file_modes(server: Server, tmp_path: Path) -> None:
    sock, log_file = tmp_path / "app.sock", tmp_path / "prefork.log"
    server.start("--umask", "077", "-b", f"unix:{sock}", "--log-file", str(log_file), workers=1)
    wait_for(lambda: log_file.exists() and "booted" in log_file.read_text(), what="boot in the log file")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # 0660 less the umask's bits
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert request(str(sock)).strip().isdigit()


# --- --preload ---


def _app_recording_imports(tmp_path: Path) -> Path:
    record = tmp_path / "imports.txt"
    (tmp_path / "preloaded.py").write_text(
        "import os\n"
        f"with open({str(record)!r}, 'a') as fh:\n"
        "    fh.write(f'{os.getpid()}\\n')\n"
        "def handler(conn, addr):\n"
        "    conn.sendall(b'%d' % os.getpid())\n"
    )
    return record


def test_preload_imports_once_in_the_master(server: Server, tmp_path: Path) -> None:
    record = _app_recording_imports(tmp_path)
    server.start("--preload", app="preloaded:handler", workers=2).wait_ready(2)
    assert record.read_text().split() == [str(server.pid)]
    assert "preloaded app preloaded:handler in the master" in server.log()
    assert server.ask_pid() in server.worker_pids()
    server.signal(signal.SIGTTIN)  # a worker forked later still uses the master's copy
    server.wait_ready(3)
    server.signal(signal.SIGHUP)  # so does a new generation
    wait_for(lambda: "reload done" in server.log(), timeout=30, what="reload")
    assert record.read_text().split() == [str(server.pid)]
    assert "--preload: new workers reuse the app loaded at start" in server.log()


def test_without_preload_each_worker_imports(server: Server, tmp_path: Path) -> None:
    record = _app_recording_imports(tmp_path)
    server.start(app="preloaded:handler", workers=2).wait_ready(2)
    assert {int(pid) for pid in record.read_text().split()} == server.worker_pids()


def test_preload_import_error_exits_4_before_forking(server: Server, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    server.start("--preload", app="broken:handler")
    assert server.wait_exit() == 4
    assert "broken at import" in server.log() and "Traceback" in server.log()
    assert "spawned" not in server.log() and "booted" not in server.log()


# --- --daemon ---


def test_daemon_detaches_and_serves(tmp_path: Path) -> None:
    pidfile, log_file, port = tmp_path / "prefork.pid", tmp_path / "prefork.log", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_") and k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    launcher = subprocess.Popen(
        [sys.executable, "-m", "prefork", "run", "--daemon", "--pid", str(pidfile), "--log-file", str(log_file),
         "-b", f"127.0.0.1:{port}", "-w", "1", "testapps:pid"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    daemon_pid = None
    try:
        out, err = launcher.communicate(timeout=60)
        assert launcher.returncode == 0, err
        assert out == b"" and err == b""
        daemon_pid = wait_for(lambda: read_pid(str(pidfile)), what="pid file")
        assert daemon_pid != launcher.pid
        daemon = psutil.Process(daemon_pid)
        assert os.getsid(daemon_pid) not in (os.getsid(0), daemon_pid)  # own session, not its leader
        assert daemon.terminal() is None
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{daemon_pid}/fd/{fd}") == "/dev/null"
        wait_for(lambda: "booted" in log_file.read_text(), what="worker booted")
        assert int(request(("127.0.0.1", port))) in {c.pid for c in daemon.children()}
        os.kill(daemon_pid, signal.SIGTERM)
        wait_for(lambda: not psutil.pid_exists(daemon_pid) or psutil.Process(daemon_pid).status() == "zombie",
                 timeout=30, what="daemon exit")
    finally:
        if daemon_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(daemon_pid), signal.SIGKILL)


def test_daemon_refused_under_systemd(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]), NOTIFY_SOCKET="/run/systemd/notify")
    result = subprocess.run([sys.executable, "-m", "prefork", "run", "--daemon", "testapps:pid"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--daemon cannot be used under systemd (NOTIFY_SOCKET is set)" in result.stderr


def test_daemon_reports_a_busy_address_before_detaching(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_") and k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = subprocess.run(
            [sys.executable, "-m", "prefork", "run", "--daemon", "-b", f"127.0.0.1:{busy.getsockname()[1]}",
             "testapps:pid"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Address already in use" in result.stderr


def test_daemon_reports_an_app_that_cannot_import_before_detaching(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_") and k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    result = subprocess.run(
        [sys.executable, "-m", "prefork", "run", "--daemon", "-b", f"127.0.0.1:{free_port()}", "nosuchmodule:app"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 4
    assert "Error: cannot import app 'nosuchmodule:app': no module named 'nosuchmodule'" in result.stderr
