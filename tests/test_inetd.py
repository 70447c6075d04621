"""Exec (inetd) mode with real programs: cat, git daemon --inetd, rsync --daemon, and small scripts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
import trustme
from conftest import ROOT, TESTS, Server, free_port, request, wait_for
from test_tls import client_context, plain_ask, write_identity

from prefork.errors import ConfigError
from prefork.settings import Settings
from prefork.sources import read_environment
from prefork.tcpenviron import format_dn

pytestmark = pytest.mark.timeout(300)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")

# Prints what the program got, as JSON: its environment, its descriptors and where they lead.
SHOW = """\
import json, os, signal, sys
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        fds[name] = os.readlink("/proc/self/fd/" + name)
    except OSError:
        pass  # the directory listdir itself had open
ignored = [sig.name for sig in signal.Signals if signal.getsignal(sig) == signal.SIG_IGN]
sys.stdout.write(json.dumps({"env": dict(os.environ), "fds": fds, "pid": os.getpid(), "pgid": os.getpgid(0),
                             "sid": os.getsid(0), "ignored": ignored}))
"""

# Reads one line: "sleep" ignores SIGTERM and sleeps forever (SIGKILL must come), anything else is echoed.
SLEEPER = """\
import os, signal, sys, time
line = sys.stdin.readline()
if line.startswith("sleep"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.write(f"{os.getpid()}\\n")
    sys.stdout.flush()
    while True:
        time.sleep(60)
sys.stdout.write(line)
"""


def exec_args(*program: str) -> list[str]:
    return ["--exec", "--", *program]


def python_program(tmp_path: Path, name: str, source: str) -> list[str]:
    path = tmp_path / name
    path.write_text(source)
    return [sys.executable, "-I", str(path)]


def show(server: Server, payload: bytes = b"") -> dict[str, object]:
    answer = request(server.address, payload, timeout=20)
    report: dict[str, object] = json.loads(answer)
    return report


def run_command(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "prefork", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


# --- cat: the connection is the program's stdin and stdout ---


def test_cat_echoes_over_the_socket(server: Server) -> None:
    server.start(*exec_args("cat"), app=None).wait_ready()
    assert server.ask(b"hello, inetd\n") == b"hello, inetd\n"
    big = os.urandom(1 << 20)
    assert server.ask(big) == big  # more than any socket buffer: the program really streams


def test_each_connection_gets_its_own_program(server: Server) -> None:
    server.start(*exec_args("sh", "-c", "echo $$"), app=None).wait_ready()
    pids = {int(server.ask()) for _ in range(3)}
    assert len(pids) == 3
    assert not pids & server.worker_pids()


# --- the environment: tcp-environ(5), systemd Accept=yes, --exec-env, PROXY ---


def test_environment_names_the_connection(server: Server, tmp_path: Path) -> None:
    program = python_program(tmp_path, "show.py", SHOW)
    server.start("--exec-env", "GREETING=hello world", "--exec-env", "EMPTY=", *exec_args(*program),
                 app=None, env={"PREFORK_LOG_LEVEL": "info", "_PREFORK_UPGRADE_FROM": "1"}).wait_ready()
    with socket.create_connection(server.address, timeout=20) as sock:
        client_port = sock.getsockname()[1]
        sock.shutdown(socket.SHUT_WR)
        report = json.loads(b"".join(iter(lambda: sock.recv(65536), b"")))
    env = report["env"]
    assert env["PROTO"] == "TCP"
    assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == ("127.0.0.1", str(server.port))
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"]) == ("127.0.0.1", str(client_port))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(client_port))
    assert env["GREETING"] == "hello world" and env["EMPTY"] == ""
    assert env["PATH"] == os.environ["PATH"]  # the rest passes through
    assert not [key for key in env if key.startswith(("PREFORK_", "_PREFORK_", "LISTEN_")) or key == "NOTIFY_SOCKET"]
    assert "SSL_PROTOCOL" not in env


def test_environment_has_the_client_a_proxy_header_names(server: Server, tmp_path: Path) -> None:
    program = python_program(tmp_path, "show.py", SHOW)
    server.start("--proxy-protocol", *exec_args(*program), app=None).wait_ready()
    env = show(server, b"PROXY TCP4 203.0.113.7 192.0.2.1 40123 443\r\n")["env"]
    assert isinstance(env, dict)
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"]) == ("203.0.113.7", "40123")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "40123")
    env6 = show(server, b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n")["env"]
    assert isinstance(env6, dict)
    assert (env6["TCPREMOTEIP"], env6["TCPREMOTEPORT"]) == ("2001:db8::7", "5555")


def test_program_runs_as_the_workers_user(server: Server) -> None:
    server.start("--user", "nobody", *exec_args("sh", "-c", "id -u; id -g; echo $HOME $USER $LOGNAME"),
                 app=None).wait_ready()
    nobody = pwd.getpwnam("nobody")
    uid, gid, names = server.ask().decode().splitlines()
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert names == f"{nobody.pw_dir} nobody nobody"


def test_unix_socket_environment(server: Server, tmp_path: Path) -> None:
    program = python_program(tmp_path, "show.py", SHOW)
    path = str(tmp_path / "inetd.sock")
    server.start("--bind", f"unix:{path}", *exec_args(*program), app=None, bind=False).wait_ready()
    env = json.loads(request(path, timeout=20))["env"]
    assert env["PROTO"] == "UNIX" and env["UNIXLOCALPATH"] == path
    assert env["UNIXREMOTEPID"] == str(os.getpid()) and env["UNIXREMOTEEUID"] == str(os.geteuid())
    assert "TCPREMOTEIP" not in env


# --- descriptors: fd 0 and 1 the connection, fd 2 the log (its pipe with --log-file), nothing else ---


def test_program_gets_only_its_three_descriptors(server: Server, tmp_path: Path) -> None:
    program = python_program(tmp_path, "show.py", SHOW)
    log_file = tmp_path / "server.log"
    server.start("--log-file", str(log_file), "--pid", str(tmp_path / "p.pid"),
                 "--metrics-bind", f"127.0.0.1:{free_port()}", "--bind", f"unix:{tmp_path / 'second.sock'}",
                 *exec_args(*program), app=None)
    wait_for(lambda: log_file.exists() and log_file.read_text().count(") booted") >= 2, 30, what="boot")
    fds = show(server)["fds"]
    assert isinstance(fds, dict)
    assert sorted(fds) == ["0", "1", "2"], fds
    assert fds["0"] == fds["1"] and fds["0"].startswith("socket:")
    # With --log-file the workers (and so their programs) write into the pipe the master copies into the
    # file: the program never holds the root-owned log file itself.
    assert fds["2"].startswith("pipe:"), fds
    assert str(log_file) not in fds.values()


def test_program_runs_in_its_own_session_with_default_signals(server: Server, tmp_path: Path) -> None:
    program = python_program(tmp_path, "show.py", SHOW)
    server.start(*exec_args(*program), app=None).wait_ready()
    report = show(server)
    assert report["pid"] == report["pgid"] == report["sid"]  # its own session and process group
    worker_ignores = {"SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR2", "SIGWINCH"}  # (Python ignores PIPE, XFSZ itself)
    assert not worker_ignores & set(report["ignored"]), report["ignored"]


def test_exec_stderr_conn_sends_stderr_to_the_client(server: Server) -> None:
    server.start("--exec-stderr", "conn", *exec_args("sh", "-c", "echo out; echo err >&2"), app=None).wait_ready()
    assert sorted(server.ask().split()) == [b"err", b"out"]


def test_stderr_goes_to_the_log_by_default(server: Server) -> None:
    server.start(*exec_args("sh", "-c", "echo out; echo complaint-to-the-log >&2"), app=None).wait_ready()
    assert server.ask() == b"out\n"
    wait_for(lambda: "complaint-to-the-log" in server.log(), what="the program's stderr in the log")


def test_stderr_reaches_the_log_file_through_the_masters_pipe(server: Server, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    server.start("--log-file", str(log_file), *exec_args("sh", "-c", "echo out; echo into-the-file >&2"),
                 app=None)
    wait_for(lambda: log_file.exists() and ") booted" in log_file.read_text(), 30, what="boot")
    assert server.ask() == b"out\n"
    wait_for(lambda: "into-the-file" in log_file.read_text(), what="the program's stderr in the log file")


def test_stderr_with_json_logs_is_one_record_per_line(server: Server, tmp_path: Path) -> None:
    """--log-format json promises one JSON object per log line: a program's stderr lines become records."""
    log_file = tmp_path / "server.log"
    script = "echo out; printf 'first line\\nsecond \"quoted\"\\nno newline at the end' >&2"
    server.start("--log-format", "json", "--log-file", str(log_file), *exec_args("sh", "-c", script), app=None)
    wait_for(lambda: log_file.exists() and "booted" in log_file.read_text(), 30, what="boot")
    assert server.ask() == b"out\n"
    # (The command line, in the master's first lines, holds the same words: wait for the program's records.)
    wait_for(lambda: log_file.read_text().count('"message": "program sh (pid ') == 3, what="the program's stderr")
    records = [json.loads(line) for line in log_file.read_text().splitlines()]  # every line, or this raises
    said = [r for r in records if r["message"].startswith("program sh (pid ")]
    assert [r["message"].split(": ", 1)[1] for r in said] == ["first line", 'second "quoted"', "no newline at the end"]
    assert all(r["role"] == "worker" and r["level"] == "info" for r in said), said


# --- TLS terminated by prefork in front of a plain program ---


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_exchange(server: Server, context: ssl.SSLContext, payload: bytes, expect: int | None = None) -> bytes:
    """Send ``payload`` while reading the answer; read ``expect`` bytes, or to the end.

    asyncio's TLS (one thread, memory BIOs) writes and reads at once; an SSLSocket cannot be
    used from two threads. Python's TLS cannot half-close either: a client of cat reads what
    it sent, then closes.
    """

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(*server.address, ssl=context, server_hostname="127.0.0.1")

        async def send() -> None:
            writer.write(payload)
            await writer.drain()

        async def receive() -> bytes:
            return await (reader.readexactly(expect) if expect is not None else reader.read())

        try:
            _, answer = await asyncio.wait_for(asyncio.gather(send(), receive()), 60)
        finally:
            writer.close()
        return answer

    return asyncio.run(exchange())


def test_tls_in_front_of_cat(server: Server, ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = write_identity(ca, tmp_path)
    server.start("--certfile", certfile, "--keyfile", keyfile, *exec_args("cat"), app=None).wait_ready()
    context = client_context(ca)
    assert tls_exchange(server, context, b"secret\n", expect=7) == b"secret\n"
    big = os.urandom(3 << 20)  # past both relay buffers: flow control each way
    assert tls_exchange(server, context, big, expect=len(big)) == big
    assert plain_ask(server, b"plain text\n") == b""  # no TLS, no program


def test_tls_end_of_stream_passes_both_ways(server: Server, ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = write_identity(ca, tmp_path)
    server.start("--certfile", certfile, "--keyfile", keyfile, "--log-level", "debug", *exec_args("cat"),
                 app=None, workers=1).wait_ready(1)
    with socket.create_connection(server.address, timeout=20) as raw, \
            client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"abc")
        assert sock.recv(3) == b"abc"
        # Our close_notify becomes EOF on cat's stdin; cat exits; its EOF becomes prefork's close_notify,
        # which unwrap() waits for (a bare TCP close would make it fail).
        sock.unwrap()
    wait_for(lambda: re.search(r"program cat \(pid \d+\) for \S+: exit status 0", server.log()), 10,
             what="cat to see EOF and exit")


def test_tls_environment_names_protocol_cipher_and_client(server: Server, ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = write_identity(ca, tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    program = python_program(tmp_path, "show.py", SHOW)
    server.start("--certfile", certfile, "--keyfile", keyfile, "--ca-certs", str(ca_file),
                 *exec_args(*program), app=None).wait_ready()
    client = ca.issue_cert("alice@example.org", common_name="alice")
    context = client_context(ca, client)
    with socket.create_connection(server.address, timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        cipher, version = sock.cipher()[0], sock.version()
        report = json.loads(b"".join(iter(lambda: sock.recv(65536), b"")))
    env = report["env"]
    assert env["SSL_PROTOCOL"] == version and env["SSL_CIPHER"] == cipher
    assert env["SSL_CLIENT_S_DN"].startswith("CN=alice,") and env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert sorted(report["fds"]) == ["0", "1", "2"]  # the socketpair's end, not the TLS socket
    anonymous = json.loads(tls_exchange(server, client_context(ca), b""))["env"]
    assert anonymous["SSL_CLIENT_VERIFY"] == "NONE" and "SSL_CLIENT_S_DN" not in anonymous


def test_format_dn() -> None:
    subject = ((("countryName", "FR"),), (("organizationName", "Acme, Inc."),),
               (("commonName", "bob"), ("userId", "7")))
    assert format_dn(subject) == "CN=bob+UID=7,O=Acme\\, Inc.,C=FR"


# --- --timeout bounds the program, not the worker ---


def test_timeout_kills_the_program_and_the_worker_serves_on(server: Server, tmp_path: Path) -> None:
    program = python_program(tmp_path, "sleeper.py", SLEEPER)
    server.start("--timeout", "1", "--log-level", "debug", *exec_args(*program),
                 app=None, workers=1).wait_ready(1)
    worker = server.worker_pids()
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(b"sleep\n")
        reader = sock.makefile("rb")
        pid = int(reader.readline())
        assert reader.read() == b""  # closed once the program is gone
    # Its end of the connection closes as it dies; the worker then reaps it and logs.
    wait_for(lambda: re.search(rf"\(pid {pid}\) for \S+: killed by SIGKILL", server.log()), 10,
             what="the program killed by SIGKILL (it ignores TERM)")
    assert re.search(rf"program python\S* \(pid {pid}\) for 127\.0\.0\.1:\d+ ran for 1s \(--timeout\)",
                     server.log())
    assert server.ask(b"next\n") == b"next\n"
    assert server.worker_pids() == worker  # the same worker: the master killed nobody
    assert "stuck" not in server.log()


def test_exec_mode_has_no_timeout_by_default(tmp_path: Path) -> None:
    assert Settings(exec=("cat",)).timeout == 0
    assert Settings().timeout == 30
    assert Settings(exec=("cat",), timeout=5).timeout == 5
    assert Settings(exec=("cat",), timeout=5).worker_timeout > 5  # the master only backs the worker up


# --- stopping: graceful lets the program finish; the program never outlives its worker ---


def test_what_a_program_leaves_in_its_group_is_killed_when_it_exits(server: Server) -> None:
    server.start(*exec_args("sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"), app=None, workers=1).wait_ready(1)
    left = int(server.ask())
    wait_for(lambda: not psutil.pid_exists(left) or psutil.Process(left).status() == psutil.STATUS_ZOMBIE,
             10, what="the program's leftover child to be killed")


def test_program_dies_with_its_worker(server: Server, tmp_path: Path) -> None:
    program = python_program(tmp_path, "sleeper.py", SLEEPER)
    server.start(*exec_args(*program), app=None, workers=1).wait_ready(1)
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(b"sleep\n")
        pid = int(sock.makefile("rb").readline())
        assert psutil.Process(pid).ppid() in server.worker_pids()
        server.signal(signal.SIGKILL)  # the master dies: its workers die, and with them their programs
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 10, what="the program to die with its worker")


def test_a_worker_killed_before_it_could_end_the_group_takes_the_programs_children_along(
        server: Server, tmp_path: Path) -> None:
    # A stopped worker cannot run its QUIT handler: the master SIGKILLs it after the fast stop's grace,
    # and the program's parent-death signal reaches the program alone. The master ends the group itself.
    server.start(*exec_args("sh", "-c", "sleep 1000 & echo $!; wait"), app=None, workers=1).wait_ready(1)
    with socket.create_connection(server.address, timeout=30) as sock:
        child = int(sock.makefile("rb").readline())
        program = psutil.Process(child).parent()
        assert program is not None
        worker = program.parent()
        assert worker is not None and worker.ppid() == server.pid
        worker.suspend()
        server.signal(signal.SIGQUIT)
        assert server.wait_exit() == 0
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
             10, what="the program's child to be killed with its group")


def test_fast_stop_kills_the_program_group(server: Server, tmp_path: Path) -> None:
    server.start(*exec_args("sh", "-c", "sleep 1000 & echo $!; wait"), app=None, workers=1).wait_ready(1)
    with socket.create_connection(server.address, timeout=30) as sock:
        child = int(sock.makefile("rb").readline())  # the program's own child, in its process group
        server.signal(signal.SIGQUIT)
        assert server.wait_exit() == 0
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
             10, what="the program's child to be killed with its group")


def test_graceful_stop_lets_the_program_finish(server: Server) -> None:
    server.start("--log-level", "debug", *exec_args("sh", "-c", "read line; sleep 1; echo done $line"),
                 app=None).wait_ready()
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(b"x\n")
        wait_for(lambda: "started for" in server.log(), 10, what="the program")
        server.signal(signal.SIGTERM)
        assert sock.makefile("rb").read() == b"done x\n"
    assert server.wait_exit() == 0


def test_graceful_stop_ends_a_program_that_outstays_the_graceful_timeout(server: Server, tmp_path: Path) -> None:
    program = python_program(tmp_path, "sleeper.py", SLEEPER)
    server.start("--graceful-timeout", "2", *exec_args(*program), app=None, workers=1).wait_ready(1)
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(b"sleep\n")
        pid = int(sock.makefile("rb").readline())
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "still running at the end of the graceful stop" in server.log()


# --- exit statuses and counters ---


def test_exit_status_is_logged_and_failures_counted(server: Server, tmp_path: Path) -> None:
    metrics = free_port()
    pidfile = tmp_path / "p.pid"
    server.start("--log-level", "debug", "--metrics-bind", f"127.0.0.1:{metrics}", "--pid", str(pidfile),
                 *exec_args("sh", "-c", "read code; exit $code"), app=None).wait_ready()
    for code in (b"0\n", b"3\n", b"0\n", b"5\n"):
        server.ask(code)
    wait_for(lambda: server.log().count("exit status 3 after") == 1 and "exit status 5 after" in server.log(), 10)
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert "prefork_program_failures_total 2" in text
    assert "prefork_program_timeouts_total 0" in text
    assert "prefork_connections_total 4" in text
    status = json.loads(run_command("status", "--pid", str(pidfile), "--json").stdout)
    assert status["stats"]["program_failures"] == 2 and status["stats"]["program_timeouts"] == 0
    assert sum(worker["program_failures"] for worker in status["workers"]) == 2


def test_reload_lets_a_running_program_finish(server: Server) -> None:
    server.start("--log-level", "debug", *exec_args("sh", "-c", "read line; sleep 1; echo done $line"),
                 app=None, workers=1).wait_ready(1)
    old = server.worker_pids()
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(b"x\n")
        wait_for(lambda: "started for" in server.log(), 10, what="the program")
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.serving_pids() - old, 20, what="the new generation")
        assert server.ask(b"y\n") == b"done y\n"  # the new generation serves meanwhile
        assert sock.makefile("rb").read() == b"done x\n"  # and the old one's program finished
    wait_for(lambda: not server.worker_pids() & old, 20, what="the old worker to leave")


# --- a PROGRAM that cannot run is refused at start ---


@pytest.mark.parametrize("command", ["run", "check"])
def test_missing_program_is_refused_at_start(command: str, tmp_path: Path) -> None:
    result = run_command(command, "--bind", f"127.0.0.1:{free_port()}", *exec_args("no-such-program-here"))
    assert result.returncode == 4, result.stderr
    assert "exec: program 'no-such-program-here' not found in PATH" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["run", "check"])
def test_program_that_is_not_executable_is_refused(command: str, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = run_command(command, "--bind", f"127.0.0.1:{free_port()}", "--user", "nobody",
                         *exec_args(str(script)))
    assert result.returncode == 4, result.stderr
    assert f"exec: program '{script}'" in result.stderr and "Traceback" not in result.stderr
    if command == "run":
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_directory_is_not_a_program(tmp_path: Path) -> None:
    result = run_command("run", "--bind", f"127.0.0.1:{free_port()}", *exec_args(str(tmp_path)))
    assert result.returncode == 4 and f"exec: program '{tmp_path}' is a directory" in result.stderr


def test_check_accepts_a_program_and_prints_it(tmp_path: Path) -> None:
    result = run_command("check", "--bind", f"127.0.0.1:{free_port()}", *exec_args("cat", "-u"))
    assert result.returncode == 0, result.stderr
    assert 'exec = ["cat", "-u"]' in result.stdout and "timeout = 0" in result.stdout
    assert "ok: program cat runs as a worker would" in result.stdout


def test_exec_from_the_config_file(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "inetd.toml"
    config.write_text('exec = ["sh", "-c", "echo from-toml $GREETING"]\nexec_env = ["GREETING=hi"]\n')
    server.start("-c", str(config), app=None).wait_ready()
    assert server.ask() == b"from-toml hi\n"


def test_exec_from_the_environment() -> None:
    values = read_environment({"PREFORK_EXEC": "sh -c 'echo \"hi there\"'", "PREFORK_EXEC_ENV": "A=1,B=2"})
    assert values == {"exec": ("sh", "-c", 'echo "hi there"'), "exec_env": ("A=1", "B=2")}
    with pytest.raises(ConfigError, match=r"PREFORK_EXEC: .* is not a command line"):
        read_environment({"PREFORK_EXEC": "sh -c 'unclosed"})
    with pytest.raises(ConfigError, match="exec_stderr: 'file' is not one of log, conn"):
        read_environment({"PREFORK_EXEC_STDERR": "file"})


def test_usage_errors() -> None:
    result = run_command("run", "--exec")
    assert result.returncode == 2 and "--exec: no PROGRAM given" in result.stderr
    result = run_command("run", "a:b", "c:d")
    assert result.returncode == 2 and "use --exec -- PROGRAM" in result.stderr
    result = run_command("run", "--exec-env", "1BAD=x", *exec_args("cat"))
    assert result.returncode == 2 and "'1BAD=x' is not of the form KEY=VALUE" in result.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"exec": ("cat",), "app": "testapps:pid"}, "exec: runs a program in place of an APP"),
    ({"exec": ("cat",), "wsgi": True}, "cannot be used with wsgi"),
    ({"exec": ("cat",), "threads": 4}, "use workers, not threads"),
    ({"exec": ("cat",), "preload": True}, "no app to preload"),
    ({"exec": ("cat",), "idle_timeout": 5.0}, "idle_timeout: the program holds the socket itself"),
])
def test_exec_conflicts(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings(**values)  # type: ignore[arg-type]


# --- git daemon --inetd: a real stream daemon, cloned by a real client ---


def git(*args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd or "/tmp"), GIT_TERMINAL_PROMPT="0")
    result = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                             "-c", "init.defaultBranch=main", *args],
                            cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def make_repository(path: Path, files: dict[str, bytes]) -> None:
    path.mkdir()
    git("init", "-q", cwd=path)
    for name, content in files.items():
        (path / name).write_bytes(content)
    git("add", ".", cwd=path)
    git("commit", "-q", "-m", "first", cwd=path)


def git_daemon(base: Path) -> list[str]:
    return exec_args("git", "daemon", "--inetd", "--export-all", f"--base-path={base}")


@needs_git
def test_git_clone_through_prefork(server: Server, tmp_path: Path) -> None:
    base = tmp_path / "repos"
    base.mkdir()
    make_repository(base / "repo", {"README": b"served by git daemon through prefork\n"})
    server.start("--log-level", "debug", *git_daemon(base), app=None).wait_ready()
    git("clone", "-q", f"git://127.0.0.1:{server.port}/repo", str(tmp_path / "clone"), cwd=tmp_path)
    assert (tmp_path / "clone" / "README").read_bytes() == b"served by git daemon through prefork\n"
    wait_for(lambda: re.search(r"program git \(pid \d+\) for \S+: exit status 0", server.log()), 10)


@needs_git
def test_graceful_stop_lets_a_clone_in_flight_complete(server: Server, tmp_path: Path) -> None:
    base = tmp_path / "repos"
    base.mkdir()
    # Incompressible content, so that packing and sending it takes a while.
    files = {f"blob{i:03}": os.urandom(512 * 1024) for i in range(120)}
    make_repository(base / "big", files)
    # A graceful timeout no loaded machine reaches: the clone must complete, not be ended.
    server.start("--log-level", "debug", "--graceful-timeout", "300", *git_daemon(base), app=None).wait_ready()
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(tmp_path))
    clone = subprocess.Popen(["git", "clone", "-q", f"git://127.0.0.1:{server.port}/big", str(tmp_path / "clone")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    wait_for(lambda: "program git" in server.log() and "started for" in server.log(), 30, what="the clone")
    server.signal(signal.SIGTERM)
    assert clone.wait(240) == 0, (clone.stderr.read() if clone.stderr else b"", server.log())
    assert server.wait_exit(60) == 0
    log = server.log()
    assert "graceful stop" in log and "exit status 0 after" in log, log
    stop, finished = log.index("graceful stop"), log.index("exit status 0 after")
    assert stop < finished, "the clone had finished before the stop: nothing was tested"
    for name, content in files.items():
        assert hashlib.sha256((tmp_path / "clone" / name).read_bytes()).digest() == hashlib.sha256(content).digest()


# --- rsync --daemon, started per connection as from inetd ---


@needs_rsync
def test_rsync_daemon_through_prefork(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "hello.txt").write_text("hello over rsync\n")
    (data / "sub" / "blob.bin").write_bytes(os.urandom(200_000))
    config = tmp_path / "rsyncd.conf"
    config.write_text(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
                      f"[module]\n    path = {data}\n    read only = yes\n    comment = test module\n")
    server.start(*exec_args("rsync", "--daemon", f"--config={config}"), app=None).wait_ready()
    url = f"rsync://127.0.0.1:{server.port}/"

    def rsync(*args: str) -> str:
        result = subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert re.search(r"^module\s+test module$", rsync(url), re.MULTILINE)
    listing = rsync(url + "module/")
    assert "hello.txt" in listing and "sub" in listing
    rsync("-a", url + "module/", str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "hello.txt").read_text() == "hello over rsync\n"
    assert (tmp_path / "copy" / "sub" / "blob.bin").read_bytes() == (data / "sub" / "blob.bin").read_bytes()


# --- under systemd: the README's units, and socket activation ---


def readme_units() -> dict[str, str]:
    """The unit files of the README's inetd section, by name (``# /etc/systemd/system/NAME`` starts each)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("<!-- BEGIN inetd -->"):readme.index("<!-- END inetd -->")]
    block = section[section.index("```ini\n") + 7:]
    block = block[:block.index("```")]
    parts = re.split(r"^# /etc/systemd/system/(\S+)\n", block, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_readme_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    stand_in = tmp_path / "prefork"  # the units name /usr/local/bin/prefork, which tests must not install
    stand_in.write_text(f"#!/bin/sh\nexec {sys.executable} -m prefork \"$@\"\n")
    stand_in.chmod(0o755)
    units = readme_units()
    assert sorted(units) == ["git-daemon.service", "git-daemon.socket"]
    for name, text in units.items():
        (tmp_path / name).write_text(text.replace("/usr/local/bin/prefork", str(stand_in)))
    result = subprocess.run([tool, "verify", *(str(tmp_path / name) for name in units)],
                            capture_output=True, text=True, timeout=50)
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "git-daemon" in line or str(tmp_path) in line]
    assert result.returncode == 0 and not ours, output


@needs_git
def test_socket_activated_git_daemon(server: Server, tmp_path: Path) -> None:
    """What the README's units do: systemd holds the socket, prefork runs git daemon per connection."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package: systemd)")
    base = tmp_path / "repos"
    base.mkdir()
    make_repository(base / "repo", {"README": b"activated\n"})
    argv = [tool, "-l", f"127.0.0.1:{server.port}", f"-EPYTHONPATH={ROOT}", f"-EPATH={os.environ['PATH']}",
            sys.executable, "-m", "prefork", "run", "--workers", "2", *git_daemon(base)]
    server.stderr = open(server.log_path, "wb")  # noqa: SIM115 - closed by Server.stop()
    server.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=server.stderr, cwd=tmp_path,
                                   start_new_session=True)
    wait_for(lambda: "Listening on" in server.log(), 20, what="systemd-socket-activate")
    git("clone", "-q", f"git://127.0.0.1:{server.port}/repo", str(tmp_path / "clone"), cwd=tmp_path)
    assert (tmp_path / "clone" / "README").read_bytes() == b"activated\n"
    assert "listening on" in server.log()  # prefork took the passed socket
