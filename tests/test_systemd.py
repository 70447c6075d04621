"""Issue 5: systemd. The notify protocol, the watchdog, socket activation, and the unit files.

A real AF_UNIX datagram socket stands in for systemd's notify socket; it asks the
kernel for each sender's credentials (SO_PASSCRED), so the tests know which
process said what. Socket activation runs under the real systemd-socket-activate,
and the unit files go through the real systemd-analyze.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, TESTS, Server, request, wait_for

from prefork.systemd import Notifier

UNITS = ROOT / "systemd"
INSTALLED_PREFORK = "/usr/local/bin/prefork"  # where the unit files expect the command
CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
STATES = ("READY", "RELOADING", "STOPPING")
SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def environ_handler(conn: socket.socket, addr: Any) -> None:
    """A handler (served by real workers): answer with the systemd variables this worker can see."""
    conn.sendall(("seen:" + " ".join(var for var in SYSTEMD_VARS if var in os.environ) + "\n").encode())


@dataclass
class Message:
    pid: int  # the sender, according to the kernel
    fields: dict[str, str]
    at: float  # time.monotonic() when we read it


class NotifySocket:
    """Plays systemd's part: receives notify datagrams, with their senders' pids."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it: a path or @abstract
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[Message] = []

    def collect(self) -> list[Message]:
        """Read every datagram waiting; return all messages so far."""
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(CREDENTIALS.size))
            except BlockingIOError:
                return self.messages
            pid = next((CREDENTIALS.unpack(cdata)[0] for level, kind, cdata in ancdata
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0)
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.messages.append(Message(pid, fields, time.monotonic()))

    def wait(self, predicate: Callable[[Message], Any], what: str, timeout: float = 20.0) -> Message:
        """The first message (already received or to come) that satisfies ``predicate``."""
        def find() -> Message | None:
            return next((m for m in self.collect() if predicate(m)), None)

        found: Message = wait_for(find, timeout, what=f"{what}; got {self.describe()}")
        return found

    def states(self, pid: int | None = None) -> list[str]:
        """READY / RELOADING / STOPPING in the order they came (from ``pid`` only, if given)."""
        return [key for m in self.collect() if pid is None or m.pid == pid for key in STATES if key in m.fields]

    def statuses(self) -> list[str]:
        return [m.fields["STATUS"] for m in self.collect() if "STATUS" in m.fields]

    def describe(self) -> str:
        return "\n".join(f"  pid {m.pid}: {m.fields}" for m in self.messages[-30:])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notify socket at a path, as systemd makes it."""
    path = tmp_path / "notify.sock"
    if len(str(path)) >= 100:  # sun_path is 108 bytes
        pytest.skip(f"tmp_path too long for a unix socket: {path}")
    receiver = NotifySocket(str(path))
    yield receiver
    receiver.close()


@pytest.fixture
def abstract_notify() -> Iterator[NotifySocket]:
    """A notify socket in the abstract namespace (NOTIFY_SOCKET=@name), as systemd --user may give."""
    receiver = NotifySocket(f"@prefork-test-{uuid.uuid4().hex}")
    yield receiver
    receiver.close()


def status_of(message: Message) -> str:
    return message.fields.get("STATUS", "")


# --- the Notifier alone ---


def test_notifier_takes_its_variables_out_of_the_environment() -> None:
    environ = {"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = Notifier.from_environment(environ)
    assert environ == {"PATH": "/bin"}  # workers and apps never see them
    assert notifier.enabled and notifier.watchdog_usec == 3_000_000
    # A re-executed master (binary upgrade) gets what it needs, but no WATCHDOG_PID naming us.
    assert notifier.environment() == {"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "3000000"}


def test_notifier_ignores_a_watchdog_meant_for_another_process() -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert notifier.enabled and notifier.watchdog_usec == 0 and notifier.watchdog_deadline() is None
    assert notifier.environment() == {"NOTIFY_SOCKET": "/run/n"}


def test_notifier_is_silent_without_a_usable_socket() -> None:
    for environ in ({}, {"NOTIFY_SOCKET": "relative/path"}, {"WATCHDOG_USEC": "1000"}):
        notifier = Notifier.from_environment(dict(environ))
        assert not notifier.enabled and notifier.environment() == {} and notifier.watchdog_deadline() is None
        assert not notifier.send({"READY": "1"})


def test_notifier_sends_to_abstract_and_path_addresses(abstract_notify: NotifySocket, notify: NotifySocket) -> None:
    for receiver in (abstract_notify, notify):
        notifier = Notifier(receiver.address)
        assert notifier.send({"STATUS": "two\nlines", "READY": "1"})
        message = receiver.wait(lambda m: "READY" in m.fields, "READY")
        assert message.pid == os.getpid() and message.fields == {"STATUS": "two lines", "READY": "1"}
        notifier.hand_over()  # after a binary upgrade the old master says nothing more
        assert not notifier.send({"STOPPING": "1"})
    assert not any("STOPPING" in m.fields for m in notify.collect() + abstract_notify.collect())


def test_notifier_survives_a_missing_socket(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert not notifier.send({"WATCHDOG": "1"})
    assert not notifier.send({"WATCHDOG": "1"})  # warned once, never raised


# --- the master's messages, end to end ---


def test_ready_reload_stop_sequence(server: Server, notify: NotifySocket) -> None:
    server.start(env={"NOTIFY_SOCKET": notify.address}).wait_ready(2)
    ready = notify.wait(lambda m: "READY" in m.fields, "READY")
    assert status_of(ready) == "2 workers, generation 1, 0 connections served"
    before_hup = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    server.signal(signal.SIGHUP)
    reloaded = notify.wait(lambda m: "READY" in m.fields and "generation 2" in status_of(m), "READY of generation 2")
    assert status_of(reloaded).startswith("2 workers, generation 2, ")
    reloading = next(m for m in notify.collect() if "RELOADING" in m.fields)
    assert int(reloading.fields["MONOTONIC_USEC"]) >= before_hup  # same clock as systemd's
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    notify.collect()
    assert notify.states() == ["READY", "RELOADING", "READY", "STOPPING"], notify.describe()
    stopping = next(m for m in notify.messages if "STOPPING" in m.fields)
    assert status_of(stopping).startswith("stopping (graceful): ")
    assert {m.pid for m in notify.messages} == {server.pid}, "only the master may speak for the service"


def test_status_counts_connections_and_reports_a_failed_reload(
        server: Server, abstract_notify: NotifySocket, tmp_path: Path) -> None:
    config = tmp_path / "prefork.toml"
    config.write_text("workers = 2\n")
    # The watchdog wakes the master twice a second: STATUS then follows the connection count.
    env = {"NOTIFY_SOCKET": abstract_notify.address, "WATCHDOG_USEC": "1000000"}
    server.start("-c", str(config), workers=None, env=env).wait_ready(2)
    abstract_notify.wait(lambda m: "READY" in m.fields, "READY")
    for _ in range(3):
        server.ask()
    abstract_notify.wait(lambda m: status_of(m) == "2 workers, generation 1, 3 connections served", "3 connections")
    config.write_text("workers = [broken\n")
    server.signal(signal.SIGHUP)
    failed = abstract_notify.wait(lambda m: "READY" in m.fields and "reload failed" in status_of(m),
                                  "READY after the failed reload")
    assert status_of(failed).startswith("2 workers, generation 1, 3 connections served; last reload failed: ")
    assert "invalid TOML" in status_of(failed)
    assert abstract_notify.states() == ["READY", "RELOADING", "READY"]
    assert server.ask_pid() in server.worker_pids()  # the old generation still serves
    statuses = [status_of(m) for m in abstract_notify.collect() if set(m.fields) == {"STATUS"}]
    assert all(a != b for a, b in itertools.pairwise(statuses)), "STATUS is sent on change only"


def test_watchdog_pings_at_half_the_interval(server: Server, abstract_notify: NotifySocket) -> None:
    interval = 0.4  # WATCHDOG_USEC: a ping is due every 0.2 s
    env = {"NOTIFY_SOCKET": abstract_notify.address, "WATCHDOG_USEC": str(int(interval * 1e6))}
    server.start(env=env).wait_ready(2)
    abstract_notify.wait(lambda m: "READY" in m.fields, "READY")
    start = time.monotonic()
    while time.monotonic() - start < 4.0:
        abstract_notify.collect()
        time.sleep(0.05)
    end = time.monotonic()
    pings = [m for m in abstract_notify.collect() if "WATCHDOG" in m.fields and start < m.at <= end]
    expected = (end - start) / (interval / 2)
    assert expected / 2 <= len(pings) <= expected * 2, f"{len(pings)} pings in {end - start:.1f}s"
    assert {m.pid for m in pings} == {server.pid}


def test_watchdog_of_another_process_is_left_alone(server: Server, abstract_notify: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": abstract_notify.address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    server.start(env=env).wait_ready(2)
    abstract_notify.wait(lambda m: "READY" in m.fields, "READY")
    time.sleep(1.0)  # five intervals: pings would have come by now
    assert not [m for m in abstract_notify.collect() if "WATCHDOG" in m.fields]


def test_graceful_drain_extends_the_stop_timeout(server: Server, abstract_notify: NotifySocket) -> None:
    server.start("--graceful-timeout", "20", app="testapps:slow", workers=1,
                 env={"NOTIFY_SOCKET": abstract_notify.address}).wait_ready(1)
    abstract_notify.wait(lambda m: "READY" in m.fields, "READY")
    with socket.create_connection(server.address, timeout=30) as client:
        client.sendall(b"2")  # connected (queued or accepted): the drain must finish it
        server.signal(signal.SIGTERM)
        stopping = abstract_notify.wait(lambda m: "STOPPING" in m.fields, "STOPPING")
        extension = int(stopping.fields["EXTEND_TIMEOUT_USEC"])
        assert 15_000_000 <= extension <= 26_000_000  # the 20 s drain (less time elapsed) plus a margin
        assert client.recv(64).strip().isdigit(), "the connection in flight was finished"
    assert server.wait_exit(30) == 0
    assert status_of(abstract_notify.collect()[-1]).startswith("stopping (graceful): 0 workers finishing")


def test_shutdown_delay_is_announced_and_covered(server: Server, abstract_notify: NotifySocket) -> None:
    server.start("--shutdown-delay", "3", "--graceful-timeout", "20", workers=1,
                 env={"NOTIFY_SOCKET": abstract_notify.address}).wait_ready(1)
    abstract_notify.wait(lambda m: "READY" in m.fields, "READY")
    server.signal(signal.SIGTERM)
    stopping = abstract_notify.wait(lambda m: "STOPPING" in m.fields, "STOPPING at the start of the delay")
    assert status_of(stopping).startswith("shutdown delay, still serving")
    extension = int(stopping.fields["EXTEND_TIMEOUT_USEC"])
    assert 20_000_000 <= extension <= 29_000_000  # the 3 s delay and the 20 s drain (less time elapsed), a margin
    assert server.ask_pid() > 0  # still serving
    assert server.wait_exit(30) == 0


def test_workers_see_no_systemd_variables(server: Server, abstract_notify: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": abstract_notify.address, "WATCHDOG_USEC": "5000000"}
    server.start(app="test_systemd:environ_handler", env=env).wait_ready(2)
    assert server.ask().strip() == b"seen:"


def test_new_master_announces_mainpid_after_usr2(server: Server, abstract_notify: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": abstract_notify.address, "WATCHDOG_USEC": "2000000"}
    server.start(env=env).wait_ready(2)
    old = server.pid
    abstract_notify.wait(lambda m: "READY" in m.fields, "READY")
    server.signal(signal.SIGUSR2)
    takeover = abstract_notify.wait(lambda m: "MAINPID" in m.fields, "MAINPID from the new master", timeout=30)
    new = int(takeover.fields["MAINPID"])
    assert new == takeover.pid != old and "READY" in takeover.fields
    assert server.wait_exit(30) == 0  # the old master retired by itself
    # The old master stopped speaking for the service: no STOPPING=1 that would stop it all.
    assert abstract_notify.states(pid=old) == ["READY"], abstract_notify.describe()
    abstract_notify.wait(lambda m: m.pid == new and "WATCHDOG" in m.fields, "the new master's watchdog")
    assert server.ask_pid() in {p.pid for p in psutil.Process(new).children()}
    os.kill(new, signal.SIGTERM)
    abstract_notify.wait(lambda m: m.pid == new and "STOPPING" in m.fields, "STOPPING from the new master")


def test_a_new_master_that_fails_to_boot_says_nothing_to_systemd(
        server: Server, abstract_notify: NotifySocket, tmp_path: Path) -> None:
    """Issue 13: its STOPPING=1 (NotifyAccess=all lets it through) would stop the service the old master serves."""
    app = tmp_path / "release.py"
    app.write_text("import os\ndef handler(conn, addr):\n    conn.sendall(b'%d' % os.getpid())\n")
    env = {"NOTIFY_SOCKET": abstract_notify.address, "WATCHDOG_USEC": "2000000"}
    server.start("--chdir", str(tmp_path), app="release:handler", env=env).wait_ready(2)
    abstract_notify.wait(lambda m: "READY" in m.fields, "READY")
    app.write_text("raise ImportError('a bad release')\n")
    server.signal(signal.SIGUSR2)
    wait_for(lambda: "upgrade failed" in server.log(), timeout=20, what="the failed upgrade")
    started = re.search(r"started new master \(pid (\d+)\)", server.log())
    assert started is not None
    said = [m.fields for m in abstract_notify.collect() if m.pid == int(started.group(1))]
    assert all(set(fields) == {"WATCHDOG"} for fields in said), abstract_notify.describe()
    assert server.ask_pid() in server.worker_pids()


# --- socket activation, under the real systemd-socket-activate ---


def start_activated(server: Server, listen: str, *args: str, env: dict[str, str] | None = None) -> Server:
    """Like Server.start, but systemd-socket-activate holds the socket and execs prefork (no --bind)."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package: systemd)")
    # The tool passes its child only the variables named with -E (and its own LISTEN_*).
    child_env = {"PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), **(env or {})}
    argv = [tool, "-l", listen, "--fdname=web", *(f"-E{name}={value}" for name, value in child_env.items()),
            sys.executable, "-m", "prefork", "run", "--workers", "2", *args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    server.stderr = open(server.log_path, "wb")  # noqa: SIM115 - closed by Server.stop()
    server.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=server.stderr, env=full_env,
                                   cwd=server.tmp_path, start_new_session=True)
    return server


def first_request(address: Any) -> bytes:
    """The first connection: it makes systemd-socket-activate execute prefork, then waits in the queue."""
    def attempt() -> bytes | None:
        try:
            return request(address, timeout=30)
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # systemd-socket-activate is not listening yet

    answer: bytes = wait_for(attempt, timeout=30, what=f"an answer on {address}")
    return answer


def test_socket_activation_serves_on_the_inherited_socket(server: Server, abstract_notify: NotifySocket) -> None:
    start_activated(server, f"127.0.0.1:{server.port}", "test_systemd:environ_handler",
                    env={"NOTIFY_SOCKET": abstract_notify.address})
    assert first_request(server.address).strip() == b"seen:"  # no LISTEN_* nor NOTIFY_SOCKET in workers
    abstract_notify.wait(lambda m: "READY" in m.fields, "READY")
    server.wait_ready(2)
    assert f"listening on web (127.0.0.1:{server.port})" in server.log()
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert abstract_notify.states() == ["READY", "STOPPING"]


def test_socket_activation_leaves_the_unix_socket_file(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "activated.sock"
    start_activated(server, str(path), "testapps:pid")
    pid = int(first_request(str(path)).strip())
    assert pid in server.worker_pids()
    assert re.search(rf"listening on web \(unix:{re.escape(str(path))}\)", server.log())
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert path.exists(), "the socket belongs to systemd: prefork must not unlink it"


# --- the unit files, through systemd-analyze ---


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return tool


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The unit files, with ExecStart= pointing at a prefork that exists on this machine.

    The units name /usr/local/bin/prefork (where pip installs it system-wide), and
    systemd-analyze verify checks that the command exists. Tests must not install
    anything there, so the copies run a stand-in that does what it would.
    """
    directory = tmp_path / "units"
    directory.mkdir()
    stand_in = directory / "prefork"
    stand_in.write_text(f"#!/bin/sh\nexec {sys.executable} -m prefork \"$@\"\n")
    stand_in.chmod(0o755)
    for unit in UNITS.iterdir():
        text = unit.read_text()
        if "ExecStart=" in text:
            assert f"ExecStart={INSTALLED_PREFORK} run -c /etc/prefork/" in text, unit.name
        (directory / unit.name).write_text(text.replace(INSTALLED_PREFORK, str(stand_in)))
    return directory


def test_unit_files_pass_systemd_analyze_verify(units: Path) -> None:
    names = ["prefork.service", "prefork.socket", "prefork@example.service"]  # a template verifies as an instance
    result = subprocess.run([analyze(), "verify", *(str(units / name) for name in names)],
                            capture_output=True, text=True, timeout=50)
    output = result.stdout + result.stderr
    # verify exits 0 on some problems and only prints them: any line about our files fails.
    ours = [line for line in output.splitlines() if "prefork" in line or str(units) in line]
    assert result.returncode == 0 and not ours, output


def test_template_runs_the_instance_config(units: Path) -> None:
    text = (UNITS / "prefork@.service").read_text()
    assert f"ExecStart={INSTALLED_PREFORK} run -c /etc/prefork/%i.toml\n" in text


@pytest.mark.parametrize("unit", ["prefork.service", "prefork@example.service"])
def test_unit_files_exposure_is_ok(units: Path, unit: str) -> None:
    # systemd-analyze rates exposure 0.0-10.0; "OK" is below 5.0, and --threshold counts tenths.
    result = subprocess.run([analyze(), "security", "--offline=yes", "--threshold=49", str(units / unit)],
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert score is not None and score.group(2) in ("PERFECT", "SAFE", "OK"), result.stdout


def test_socket_activation_survives_a_binary_upgrade(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "activated.sock"
    start_activated(server, str(path), "testapps:pid")
    first_request(str(path))
    server.wait_ready(2)
    server.signal(signal.SIGUSR2)
    assert server.wait_exit(30) == 0  # the old master retired once the new one served
    started = re.search(r"started new master \(pid (\d+)\)", server.log())
    assert started is not None, server.log()
    new = psutil.Process(int(started.group(1)))
    assert int(request(str(path)).strip()) in {c.pid for c in new.children()}
    new.terminate()
    psutil.wait_procs([new], timeout=20)
    assert path.exists(), "the socket still belongs to systemd after an upgrade: prefork must not unlink it"
