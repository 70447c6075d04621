"""Many prefork hosts behind a real HAProxy, simulated with Linux network namespaces (issue 18).

The topology (every name prefixed, every address from 10.250.0.0/24, all of it
inside namespaces made here, so no packet ever leaves them):

    PREFIX-r   the "router": a bridge br0 that every other namespace is wired to by a veth pair
    PREFIX-h1  10.250.0.11   prefork master (--proxy-protocol, --metrics-bind :9100), app on :8000
    PREFIX-h2  10.250.0.12   likewise
    PREFIX-h3  10.250.0.13   likewise
    PREFIX-lb  10.250.0.2    HAProxy: checks GET /readyz on :9100, sends PROXY v2 to :8000
    PREFIX-cl  10.250.0.3    the load clients, each from its own address 10.250.0.101...

``haproxy_config`` and ``host_config`` are the one place the HAProxy configuration
and a host's prefork file come from: the tests run them and the README shows them
(a test checks that they are the same). The load and the scenarios are in
``hosts_scenarios.py``.

``app`` is the WSGI application every host serves: it answers its host's name and
the client address and port it was given (through PROXY v2).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CLONE_NEWNET = 0x40000000
SUBNET = "10.250.0"
LB_ADDRESS, CLIENT_ADDRESS = f"{SUBNET}.2", f"{SUBNET}.3"
APP_PORT, METRICS_PORT, LB_PORT = 8000, 9100, 80
CHECK_INTER_MS, CHECK_FALL, CHECK_RISE = 300, 2, 2
SHUTDOWN_DELAY = 2.0  # > CHECK_INTER_MS x CHECK_FALL: HAProxy takes the host out before it stops accepting
HAPROXY = "/usr/sbin/haproxy"
T = TypeVar("T")


def host_address(index: int) -> str:
    return f"{SUBNET}.{11 + index}"


# --- the application every host serves ---


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """``HOST REMOTE_ADDR REMOTE_PORT``; 10 ms of work, so that a request is in flight for a while."""
    time.sleep(0.01)
    body = f"{os.environ.get('HOST_NAME', '?')} {environ.get('REMOTE_ADDR')} {environ.get('REMOTE_PORT')}\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body.encode()]


# --- what is available ---


def unavailable() -> str | None:
    """Why the multi-host simulation cannot run here (one line), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    if not os.path.exists(HAPROXY):
        return f"needs HAProxy at {HAPROXY}"
    probe = f"pfprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if made.returncode != 0:
        return f"network namespaces unavailable: {made.stderr.strip() or 'ip netns add failed'}"
    return None


# --- namespaces ---


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


_libc = ctypes.CDLL(None, use_errno=True)


def enter(namespace: str) -> None:
    """Move the calling thread (only it: a network namespace is per task) into ``namespace``."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(namespace: str, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """``fn()`` run in a thread inside ``namespace`` (its sockets belong there); its result or exception."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            enter(namespace)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise TimeoutError(f"call in {namespace} took more than {timeout}s")
    return box["value"]  # type: ignore[no-any-return]


class Topology:
    """The namespaces and links, made by ``create`` and all deleted by ``delete`` (also leftovers)."""

    MEMBERS = ("h1", "h2", "h3", "lb", "cl")

    def __init__(self, prefix: str, clients: int = 4) -> None:
        self.prefix = prefix
        self.clients = clients
        self.router = f"{prefix}-r"
        self.addresses = {"h1": host_address(0), "h2": host_address(1), "h3": host_address(2),
                          "lb": LB_ADDRESS, "cl": CLIENT_ADDRESS}
        self.client_addresses = [f"{SUBNET}.{101 + i}" for i in range(clients)]

    def ns(self, member: str) -> str:
        return f"{self.prefix}-{member}"

    def names(self) -> list[str]:
        return [self.router, *(self.ns(m) for m in self.MEMBERS)]

    def delete(self) -> None:
        """Delete every namespace of ours (the veth pairs and the bridge go with them), first killing
        what still runs in one (left by a run that was itself killed before its cleanup)."""
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        for name in self.names():
            if name in existing:
                pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def create(self) -> None:
        self.delete()  # a run killed before its cleanup
        ip("netns", "add", self.router)
        ip("-n", self.router, "link", "add", "br0", "type", "bridge")
        ip("-n", self.router, "link", "set", "br0", "up")
        for member in self.MEMBERS:
            ns = self.ns(member)
            ip("netns", "add", ns)
            ip("-n", self.router, "link", "add", f"v-{member}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.router, "link", "set", f"v-{member}", "master", "br0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.addresses[member]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        for address in self.client_addresses:
            ip("-n", self.ns("cl"), "addr", "add", f"{address}/24", "dev", "eth0")


# --- HAProxy ---


def haproxy_config(hosts: list[str], stats_socket: str = "/run/haproxy/admin.sock",
                   bind: str = f"{LB_ADDRESS}:{LB_PORT}") -> str:
    """The HAProxy configuration the test runs and the README shows."""
    servers = "".join(f"    server h{i + 1} {address}:{APP_PORT} check port {METRICS_PORT}\n"
                      for i, address in enumerate(hosts))
    return f"""\
global
    stats socket {stats_socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1                   # every retry may go to another host
    option http-server-close              # one request per connection to a host

frontend web
    bind {bind}
    default_backend prefork

backend prefork
    balance roundrobin
    option httpchk GET /readyz            # prefork's readiness: 200 serving, 503 booting or stopping
    http-check expect status 200
    # checks go to the metrics port, plainly; traffic to the app port starts with a PROXY v2 header
    default-server inter {CHECK_INTER_MS}ms fall {CHECK_FALL} rise {CHECK_RISE} send-proxy-v2
{servers}"""


class HAProxy:
    """HAProxy in the load balancer's namespace, driven through its stats socket."""

    def __init__(self, topology: Topology, directory: Path) -> None:
        self.topology = topology
        self.socket_path = str(directory / "haproxy.sock")
        self.config_path = directory / "haproxy.cfg"
        self.log_path = directory / "haproxy.log"
        hosts = [topology.addresses[f"h{i}"] for i in (1, 2, 3)]
        self.config_path.write_text(haproxy_config(hosts, self.socket_path))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.topology.ns("lb"), HAPROXY, "-db", "-f",
                                          str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(lambda: os.path.exists(self.socket_path) and self.states(), 15, what="HAProxy's stats socket")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(self.socket_path)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, list[str]]:
        """Server name -> its row of ``show stat`` (CSV); {} if HAProxy does not answer."""
        try:
            csv = self.command("show stat")
        except OSError:
            return {}
        rows = [line.split(",") for line in csv.splitlines() if line and not line.startswith("#")]
        return {row[1]: row for row in rows if len(row) > 17 and row[0] == "prefork" and row[1].startswith("h")}

    def states(self) -> dict[str, str]:
        """Server name -> HAProxy's status ("UP", "DOWN", "UP 1/2", ...)."""
        return {name: row[17] for name, row in self.stats().items()}

    def sessions_sent(self, server: str) -> int:
        """How many connections HAProxy has sent to ``server`` in all (``stot``)."""
        return int(self.stats()[server][7])

    def in_pool(self, server: str) -> bool:
        """HAProxy sends to it: UP, or going down ("UP 1/2") but not yet out."""
        return self.states().get(server, "").startswith("UP")


# --- one prefork host ---


def host_config(address: str, app_name: str) -> str:
    """A host's prefork config file (the README shows it; the test adds its own pid file)."""
    return f"""\
app = "{app_name}"
wsgi = true
workers = 2
bind = ["{address}:{APP_PORT}"]
metrics_bind = "{address}:{METRICS_PORT}"  # /metrics, /livez, /readyz
proxy_protocol = true
proxy_allow = ["{LB_ADDRESS}"]  # the load balancer: any other peer is closed
shutdown_delay = {SHUTDOWN_DELAY:g}  # longer than HAProxy's inter x fall
graceful_timeout = 10
"""


class Host:
    """One prefork master in its namespace, with its own config file and pid file."""

    def __init__(self, name: str, topology: Topology, directory: Path) -> None:
        self.name = name
        self.ns = topology.ns(name)
        self.address = topology.addresses[name]
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = self.directory / "prefork.toml"
        self.pidfile = self.directory / "prefork.pid"
        self.log_path = self.directory / "prefork.log"
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config.write_text(host_config(self.address, "netns:app") + f'pid = "{self.pidfile}"\n')

    def start(self) -> None:
        env = dict(os.environ, HOST_NAME=self.name, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-m", "prefork", "run",
                                          "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.directory, start_new_session=True)

    def master_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip() or 0)
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and alive(pid) else None

    def metrics(self, path: str = "/metrics") -> tuple[int, str]:
        """(status, body) of GET ``path`` on this host's metrics address; (0, why) if it does not answer."""
        def get() -> tuple[int, str]:
            try:
                return http_get((self.address, METRICS_PORT), path)
            except OSError as exc:
                return 0, f"{type(exc).__name__}: {exc}"
        return call_in(self.ns, get)

    def ready(self) -> bool:
        return self.metrics("/readyz")[0] == 200

    def gauge(self, name: str) -> float | None:
        status, body = self.metrics()
        for line in body.splitlines() if status == 200 else ():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def signal(self, signum: int) -> int:
        pid = self.master_pid()
        assert pid is not None, f"{self.name}: no live master"
        os.kill(pid, signum)
        return pid

    def wait_gone(self, pid: int, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.pid == pid:
            self.proc.wait(timeout)
        else:
            wait_for(lambda: not alive(pid), timeout, what=f"{self.name}: master {pid} exited")

    def stop(self) -> None:
        """Fast stop, then SIGKILL for whatever is left (the fixture's cleanup)."""
        pid = self.master_pid()
        pids = [pid] if pid else []
        if self.proc is not None and self.proc.poll() is None:
            pids.append(self.proc.pid)
        for p in set(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def http_get(address: tuple[str, int], path: str, timeout: float = 2.0,
             source: tuple[str, int] | None = None) -> tuple[int, str]:
    with socket.create_connection(address, timeout, source_address=source) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("closed without an answer")
    return int(head.split(None, 2)[1]), body.decode(errors="replace")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
