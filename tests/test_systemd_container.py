"""Issue 13: prefork under a real systemd (Debian 12's systemd 252 as PID 1 in a container).

The project's unit files, installed unmodified, checked the way an operator would:
socket activation, start, reload, binary upgrade, restart, stop and the watchdog. The
container (tests/nspawn.py) boots once for the module; each test resets the units it
uses. Load runs inside the container, against its own loopback.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import pytest
from conftest import TESTS, wait_for
from nspawn import Container, Unavailable, booted_container

# Each test's own time; booting the container (and a first debootstrap) has its own limits in nspawn.py.
pytestmark = pytest.mark.timeout(120, func_only=True)

SERVICE, SOCKET = "prefork.service", "prefork.socket"
PORT = 8000  # ListenStream= in systemd/prefork.socket
WORKERS = 2
CONFIG = f'app = "app:handler"\nchdir = "/srv/app"\nworkers = {WORKERS}\n'
# The app: answers with the worker's pid; "hold SECONDS" first says "holding", then waits.
# Importing it (in each worker, as it boots) leaves a line in the service's private /tmp.
APP = """\
import os, time
with open("/tmp/imported", "a") as f:
    f.write("%d\\n" % os.getpid())
time.sleep(0.3)

def handler(conn, addr):
    data = conn.recv(64)
    if data.startswith(b"hold "):
        conn.sendall(b"holding\\n")
        time.sleep(float(data[5:]))
    conn.sendall(b"%d\\n" % os.getpid())
"""
# Inside the container: tests/load.py against the loopback until stdin closes, counts on stdout.
LOAD_RUNNER = """\
import json, sys, threading, time
sys.path.insert(0, "/srv/test")
from load import Load

with Load(("127.0.0.1", PORT), concurrency=int(sys.argv[1])) as load:
    def report():
        while True:
            print("ok", load.ok, flush=True)
            time.sleep(0.1)
    threading.Thread(target=report, daemon=True).start()
    sys.stdin.read()
print(json.dumps({"ok": load.ok, "failures": dict(load.failures)}), flush=True)
""".replace("PORT", str(PORT))
# Inside the container: one connection that asks the handler to hold it for SECONDS.
HOLDER = """\
import socket, sys
with socket.create_connection(("127.0.0.1", PORT), timeout=60) as sock:
    sock.sendall(b"hold " + sys.argv[1].encode())
    reader = sock.makefile("rb")
    print(reader.readline().decode().strip(), flush=True)
    print("answer", reader.readline().decode().strip() or "(none)", flush=True)
""".replace("PORT", str(PORT))


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    try:
        with booted_container() as booted:
            booted.write("/srv/app/app.py", APP)
            booted.write("/srv/test/load.py", (TESTS / "load.py").read_text())
            booted.write("/srv/test/loadrun.py", LOAD_RUNNER)
            booted.write("/srv/test/holder.py", HOLDER)
            booted.run("systemctl", "daemon-reload")
            yield booted
    except Unavailable as exc:
        pytest.skip(f"no container: {exc}")


@pytest.fixture
def units(container: Container) -> Container:
    """prefork.socket listening, prefork.service stopped with no failure on record, the default config and app."""
    container.run("systemctl", "stop", SERVICE, SOCKET, check=False)
    container.run("systemctl", "reset-failed", SERVICE, SOCKET, check=False)
    container.write("/etc/prefork/prefork.toml", CONFIG)
    container.write("/srv/app/app.py", APP)
    container.run("systemctl", "start", SOCKET)
    return container


# --- helpers ---

class ContainerLoad:
    """tests/load.py run inside the container; its counters read from its stdout."""

    def __init__(self, container: Container, concurrency: int = 4) -> None:
        self.proc = container.popen("python3", "/srv/test/loadrun.py", str(concurrency), stdin=True)
        self.ok = 0
        self.result: dict[str, object] = {}
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ok "):
                self.ok = int(line.split()[1])
            elif line.startswith("{"):
                self.result = json.loads(line)

    def wait_requests(self, count: int, timeout: float = 30.0) -> None:
        start = self.ok
        wait_for(lambda: self.ok - start >= count, timeout, what=f"{count} more answers under load")

    def finish(self) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)
        self.reader.join(10)
        assert self.result, self.proc.stderr.read() if self.proc.stderr else "no result"
        return self.result

    def __enter__(self) -> ContainerLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class HeldConnection:
    """One client connection that the handler holds for ``seconds``, open from inside the container."""

    def __init__(self, container: Container, seconds: float) -> None:
        self.proc = container.popen("python3", "/srv/test/holder.py", str(seconds))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "holding", (line, self.proc.stderr.read() if self.proc.stderr else "")

    def answer(self) -> str:
        """The rest of the answer: "answer <worker pid>", or "answer (none)" if the connection was cut."""
        out, err = self.proc.communicate(timeout=60)
        return out.strip() or f"(holder failed: {err.strip()})"


def main_pid(container: Container) -> int:
    return int(container.show(SERVICE, "MainPID")["MainPID"])


def status_text(container: Container) -> str:
    return container.show(SERVICE, "StatusText")["StatusText"]


def generation(container: Container) -> int:
    found = re.search(r"generation (\d+)", status_text(container))
    return int(found.group(1)) if found else 0


def journal(container: Container, since_cursor: str = "") -> str:
    container.run("journalctl", "--sync", check=False)
    argv = ["journalctl", "-u", SERVICE, "--no-pager", "-o", "short-monotonic"]
    if since_cursor:
        argv.append(f"--after-cursor={since_cursor}")
    return container.run(*argv, check=False).stdout


def cursor(container: Container) -> str:
    """The journal's position now: journal(container, cursor) shows only what comes after."""
    container.run("journalctl", "--sync", check=False)
    out = container.run("journalctl", "-n", "1", "-o", "json", "--no-pager", check=False).stdout.strip()
    return str(json.loads(out.splitlines()[-1])["__CURSOR"]) if out else ""


def ask(container: Container) -> int:
    """One connection from inside the container; the pid of the worker that answered."""
    out = container.run("python3", "-c", f"import socket; s = socket.create_connection(('127.0.0.1', {PORT}), 30); "
                        "s.shutdown(socket.SHUT_WR); print(s.makefile().read())").stdout
    return int(out.strip())


def children(container: Container, pid: int) -> set[int]:
    """The pids of ``pid``'s children (pids as the container numbers them, like MainPID)."""
    out = container.run("ps", "-o", "pid=", "--ppid", str(pid), check=False).stdout
    return {int(word) for word in out.split()}


def start_service(container: Container) -> int:
    container.run("systemctl", "start", SERVICE)
    return main_pid(container)


def upgrade(container: Container) -> tuple[int, int]:
    """USR2 as the README says; wait until systemd follows the new master and the old one has exited."""
    old = main_pid(container)
    container.run("systemctl", "kill", "--kill-whom=main", "-s", "USR2", SERVICE)
    new = wait_for(lambda: (pid := main_pid(container)) not in (0, old) and pid, timeout=30,
                   what="MainPID to move to the new master")
    wait_for(lambda: not alive(container, old), timeout=30, what="the old master to exit")
    return old, new


def alive(container: Container, pid: int) -> bool:
    """``pid`` (in the container's numbering) exists and is not a zombie."""
    state = container.run("ps", "-o", "stat=", "-p", str(pid), check=False).stdout.strip()
    return bool(state) and not state.startswith("Z")


# --- the operator's checks ---

def test_socket_activation_starts_the_service(units: Container) -> None:
    assert units.show(SERVICE, "ActiveState")["ActiveState"] == "inactive"
    pid = ask(units)  # the first connection makes systemd start prefork.service, and waits in the queue
    assert units.show(SERVICE, "ActiveState")["ActiveState"] == "active"
    assert pid in children(units, main_pid(units))
    assert "listening on http" in journal(units)


def test_start_is_reported_only_once_the_workers_booted(units: Container) -> None:
    master = start_service(units)  # returns when systemd got READY=1
    # The service's private /tmp (PrivateTmp=yes) is new at each start, and emptied at stop.
    imported = units.run("sh", "-c", "cat /tmp/systemd-private-*-prefork.service-*/tmp/imported",
                         check=False).stdout.split()
    assert len(imported) == WORKERS, f"{len(imported)} of {WORKERS} workers had imported the app at READY"
    assert re.match(rf"{WORKERS} workers, generation 1\b", status_text(units)), status_text(units)
    assert set(map(int, imported)) <= children(units, master)


def test_reload_under_load_fails_nothing(units: Container) -> None:
    master = start_service(units)
    with ContainerLoad(units) as load:
        load.wait_requests(50)
        for expected in (2, 3, 4):
            units.run("systemctl", "reload", SERVICE)
            wait_for(lambda expected=expected: generation(units) == expected  # type: ignore[misc]
                     and units.show(SERVICE, "ActiveState")["ActiveState"] == "active",
                     timeout=30, what=f"generation {expected} serving")
            load.wait_requests(50)
        result = load.finish()
    assert result["failures"] == {}, result
    assert main_pid(units) == master  # a reload never moves the master


def test_reload_with_a_broken_config_keeps_serving(units: Container) -> None:
    master = start_service(units)
    workers = children(units, master)
    units.write("/etc/prefork/prefork.toml", CONFIG + "wokers = 3\n")
    units.run("systemctl", "reload", SERVICE)
    wait_for(lambda: "last reload failed" in status_text(units), timeout=30, what="the failure in Status")
    assert "wokers" in status_text(units)
    assert units.show(SERVICE, "ActiveState")["ActiveState"] == "active"
    assert ask(units) in workers and children(units, master) == workers


def test_usr2_under_load_fails_nothing_and_systemd_follows(units: Container) -> None:
    start_service(units)
    mark = cursor(units)
    with ContainerLoad(units) as load:
        load.wait_requests(50)
        _, new = upgrade(units)
        load.wait_requests(50)
        result = load.finish()
    assert result["failures"] == {}, result
    assert ask(units) in children(units, new)
    assert units.show(SERVICE, "ActiveState")["ActiveState"] == "active"
    assert "not our child" not in journal(units, mark)  # systemd adopted the new master before MAINPID=


def test_stop_after_usr2_is_graceful(units: Container) -> None:
    """Defect 2: systemd must see the upgraded master as its own child, or its stop kills everything at once."""
    start_service(units)
    mark = cursor(units)
    upgrade(units)
    held = HeldConnection(units, 3)
    units.run("systemctl", "stop", SERVICE)
    assert re.fullmatch(r"answer \d+", held.answer()), journal(units, mark)
    shown = units.show(SERVICE, "Result", "ActiveState")
    assert shown == {"Result": "success", "ActiveState": "inactive"}, (shown, journal(units, mark))
    assert "not our child" not in journal(units, mark)


def test_failed_usr2_keeps_the_old_master_in_charge(units: Container) -> None:
    """The new master cannot import the app: the old one serves on, and systemd still follows it."""
    master = start_service(units)
    workers = children(units, master)
    mark = cursor(units)
    units.write("/srv/app/app.py", "raise ImportError('a bad release')\n")
    try:
        units.run("systemctl", "kill", "--kill-whom=main", "-s", "USR2", SERVICE)
        wait_for(lambda: "upgrade failed" in journal(units, mark), timeout=30, what="the old master to see it fail")
    finally:
        units.write("/srv/app/app.py", APP)
    shown = units.show(SERVICE, "MainPID", "ActiveState", "SubState")
    assert shown == {"MainPID": str(master), "ActiveState": "active", "SubState": "running"}, journal(units, mark)
    assert ask(units) in workers and children(units, master) == workers
    assert "generation 1" in status_text(units), status_text(units)


def test_restart_with_the_socket_holding_the_port_refuses_nothing(units: Container) -> None:
    old = start_service(units)
    with ContainerLoad(units) as load:
        load.wait_requests(50)
        units.run("systemctl", "restart", SERVICE)
        assert main_pid(units) != old
        load.wait_requests(50)
        result = load.finish()
    assert result["failures"] == {}, result


def test_stop_is_graceful(units: Container) -> None:
    start_service(units)
    held = HeldConnection(units, 3)
    units.run("systemctl", "stop", SERVICE)
    assert re.fullmatch(r"answer \d+", held.answer())
    assert units.show(SERVICE, "Result", "ActiveState") == {"Result": "success", "ActiveState": "inactive"}


def test_watchdog_restarts_a_frozen_master(units: Container) -> None:
    frozen = start_service(units)
    mark = cursor(units)
    units.run("kill", "-STOP", str(frozen))
    # WatchdogSec=30: systemd sends SIGABRT (and SIGCONT) to the master, then starts it again.
    restarted = wait_for(lambda: (pid := main_pid(units)) not in (0, frozen) and pid, timeout=80,
                         what="a new master after the watchdog fired")
    assert "Watchdog timeout" in journal(units, mark)
    wait_for(lambda: units.show(SERVICE, "ActiveState")["ActiveState"] == "active", timeout=30, what="active")
    assert ask(units) in children(units, restarted)


def test_security_exposure_is_still_ok(units: Container) -> None:
    start_service(units)
    out = units.run("systemd-analyze", "security", "--no-pager", SERVICE, check=False).stdout
    score = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out)
    assert score is not None and score.group(2) in ("PERFECT", "SAFE", "OK"), out

