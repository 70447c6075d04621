"""The five scenarios of issue 18 on the hosts ``netns.py`` builds, under load, with their figures.

Each scenario is a function returning its figures (requests, failures by kind, the
seconds things took), so that tests/test_many_hosts.py asserts on them and
bench/hosts.py reports them. The load: one thread per client address in the clients'
namespace, each in a loop of one GET per connection through HAProxy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns import LB_ADDRESS, LB_PORT, HAProxy, Host, Topology, alive, enter, wait_for

# --- load ---


@dataclass
class Tally:
    """What the load clients saw over one window: answers by host, failures by kind."""

    ok: int = 0
    by_host: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    wrong_client: int = 0  # an answer naming another client address or port than ours (PROXY v2 broken)
    last_seen: dict[str, float] = field(default_factory=dict)  # host -> time.monotonic() of its last answer
    first_seen: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Load:
    """One thread per client address in the clients' namespace, each in a loop of GET / through HAProxy."""

    def __init__(self, topology: Topology, timeout: float = 10.0) -> None:
        self.topology = topology
        self.timeout = timeout
        self.tally = Tally()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(address,), daemon=True)
                        for address in topology.client_addresses]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(self.timeout + 5)

    def window(self) -> Tally:
        """The tally so far, and a fresh one from now on."""
        with self.lock:
            tally, self.tally = self.tally, Tally()
        return tally

    def loop(self, address: str) -> None:
        enter(self.topology.ns("cl"))
        while not self.stopping.is_set():
            kind, answer, me = self.once(address)
            now = time.monotonic()
            with self.lock:
                tally = self.tally
                if kind:
                    tally.failures[kind] += 1
                    continue
                tally.ok += 1
                host, _, client = answer.partition(" ")
                tally.by_host[host] += 1
                tally.first_seen.setdefault(host, now)
                tally.last_seen[host] = now
                if client != me:
                    tally.wrong_client += 1

    def once(self, address: str) -> tuple[str, str, str]:
        """("", the answer, "our address and port") or (the kind of failure, "", "")."""
        try:
            with socket.socket() as sock:
                sock.settimeout(self.timeout)
                sock.bind((address, 0))
                me = f"{address} {sock.getsockname()[1]}"
                sock.connect((LB_ADDRESS, LB_PORT))
                sock.sendall(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
                chunks = []
                while data := sock.recv(65536):
                    chunks.append(data)
        except TimeoutError:
            return "timeout", "", ""
        except OSError as exc:
            return type(exc).__name__, "", ""
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if not head:
            return "closed without an answer", "", ""
        status = head.split(None, 2)[1].decode(errors="replace")
        if status != "200":
            return f"HTTP {status}", "", ""
        return "", body.decode(errors="replace").strip(), me


# --- the cluster and the scenarios ---


class Cluster:
    """The topology, three hosts and HAProxy; ``close`` tears all of it down, whatever state it is in."""

    def __init__(self, prefix: str, directory: Path, clients: int = 4) -> None:
        self.topology = Topology(prefix, clients)
        self.directory = directory
        self.hosts: dict[str, Host] = {}
        self.haproxy: HAProxy | None = None

    def open(self) -> Cluster:
        self.topology.create()
        self.hosts = {name: Host(name, self.topology, self.directory) for name in ("h1", "h2", "h3")}
        for host in self.hosts.values():
            host.start()
        self.haproxy = HAProxy(self.topology, self.directory)
        self.haproxy.start()
        self.ensure_all_up()
        return self

    def close(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for host in self.hosts.values():
            host.stop()
        self.topology.delete()

    @property
    def lb(self) -> HAProxy:
        assert self.haproxy is not None
        return self.haproxy

    def ensure_all_up(self, timeout: float = 60.0) -> None:
        """Every host has a live master, answers ready, and HAProxy has it in the pool."""
        for host in self.hosts.values():
            if host.master_pid() is None and (host.proc is None or host.proc.poll() is not None):
                host.start()
        for host in self.hosts.values():
            wait_for(host.ready, timeout, what=f"{host.name} ready", interval=0.1)
        wait_for(lambda: all(state == "UP" for state in self.lb.states().values()) and len(self.lb.states()) == 3,
                 timeout, what=f"every host UP in HAProxy ({self.lb.states()})", interval=0.1)

    def log_tail(self) -> str:
        """The hosts' and HAProxy's logs (for a failure's message)."""
        parts = []
        for path in [*(h.log_path for h in self.hosts.values()), self.lb.log_path]:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name} ({path.parent.name})\n" + path.read_text()[-3000:])
        return "\n".join(parts)


def served_by_all(load: Load, hosts: list[str], count: int) -> bool:
    with load.lock:
        return all(load.tally.by_host[h] >= count for h in hosts)


def served_since(load: Load, host: str, moment: float) -> bool:
    with load.lock:
        return load.tally.last_seen.get(host, 0.0) > moment


def steady(cluster: Cluster, load: Load, per_host: int = 30) -> dict[str, Any]:
    """Scenario 1: load until every host has served ``per_host`` requests."""
    load.window()
    started = time.monotonic()
    wait_for(lambda: served_by_all(load, list(cluster.hosts), per_host), 60, what="every host serving")
    return result(load.window(), started)


def rolling_reload(cluster: Cluster, load: Load) -> dict[str, Any]:
    """Scenario 2: HUP host by host; each has a new generation serving before the next one's turn."""
    load.window()
    started = time.monotonic()
    for host in cluster.hosts.values():
        reload_host(cluster, load, host)
    return result(load.window(), started)


def reload_host(cluster: Cluster, load: Load, host: Host) -> None:
    generation = host.gauge("prefork_generation") or 0.0
    host.signal(signal.SIGHUP)
    wait_for(lambda: (host.gauge("prefork_generation") or 0.0) > generation, 30, what=f"{host.name}: a new generation")
    back_in_service(cluster, load, host, time.monotonic(), "HUP")


def back_in_service(cluster: Cluster, load: Load, host: Host, since: float, after: str) -> None:
    """``host`` answers ready, HAProxy has it UP, and it has served a client since ``since``."""
    wait_for(lambda: host.ready() and cluster.lb.states().get(host.name) == "UP", 30,
             what=f"{host.name}: ready and UP after {after}")
    wait_for(lambda: served_since(load, host.name, since), 30, what=f"{host.name}: serving after {after}")


def rolling_upgrade(cluster: Cluster, load: Load) -> dict[str, Any]:
    """Scenario 3: USR2 host by host; the old master exits by itself once the new one serves."""
    load.window()
    started = time.monotonic()
    for host in cluster.hosts.values():
        upgrade_host(cluster, load, host)
    return result(load.window(), started)


def upgrade_host(cluster: Cluster, load: Load, host: Host) -> None:
    old = host.signal(signal.SIGUSR2)
    host.wait_gone(old, 60)
    new = wait_for(host.master_pid, 10, what=f"{host.name}: the new master's pid file")
    assert new != old, f"{host.name}: still master {old}"
    back_in_service(cluster, load, host, time.monotonic(), "USR2")


def phase_of(host: Host) -> str:
    """The master's phase from its metrics (prefork_phase{phase=...} 1); "gone" once it no longer answers."""
    status, body = host.metrics()
    if status != 200:
        return "gone"
    for line in body.splitlines():
        if line.startswith("prefork_phase{") and line.rstrip().endswith(" 1"):
            return line.split('"')[1]
    return "?"


def drain(cluster: Cluster, load: Load, name: str = "h2") -> dict[str, Any]:
    """Scenario 4: TERM one host (--shutdown-delay); it must leave HAProxy's pool before it stops accepting.

    Watched every 50 ms until the master exits: when HAProxy stopped counting the host
    in (status DOWN), and when the master's phase left "serving" and "shutdown delay".
    Then the host is started again (as systemd would) and its rejoining timed.
    """
    host = cluster.hosts[name]
    load.window()
    started = time.monotonic()
    pid = host.signal(signal.SIGTERM)
    left_pool = stopped_accepting = last_accepting = None
    phases: list[tuple[str, float]] = []
    readyz: list[tuple[str, int]] = []  # (phase, /readyz status) at each look
    while alive(pid) and time.monotonic() - started < 60:
        now = time.monotonic() - started
        if left_pool is None and not cluster.lb.in_pool(name):
            left_pool = now
        phase = phase_of(host)
        if not phases or phases[-1][0] != phase:
            phases.append((phase, round(now, 3)))
        readyz.append((phase, host.metrics("/readyz")[0]))
        if phase in ("serving", "shutdown delay"):
            last_accepting = now
        elif stopped_accepting is None:
            stopped_accepting = now
        time.sleep(0.05)
    host.wait_gone(pid, 10)
    stopped = time.monotonic() - started
    if stopped_accepting is None:
        # With nothing in flight the graceful stop can end between two looks (each takes
        # a few HTTP round trips): the listener was closed by the time the master was gone.
        stopped_accepting = stopped
    rejoined = rejoin(cluster, load, host)
    figures = result(load.window(), started)
    figures.update(left_pool_after=left_pool, last_seen_accepting_after=last_accepting,
                   stopped_accepting_after=stopped_accepting, exited_after=stopped,
                   phases=phases, readyz=readyz, **rejoined)
    return figures


def rejoin(cluster: Cluster, load: Load, host: Host) -> dict[str, Any]:
    """Start ``host`` again; how long until HAProxy has it UP and it serves traffic."""
    restarted = time.monotonic()
    host.start()
    wait_for(lambda: cluster.lb.states().get(host.name) == "UP", 60, what=f"{host.name} UP again")
    up = time.monotonic() - restarted
    wait_for(lambda: served_since(load, host.name, restarted), 30, what=f"{host.name} serving again")
    return {"rejoined_pool_after": up, "serving_again_after": time.monotonic() - restarted}


def kill(cluster: Cluster, load: Load, name: str = "h3") -> dict[str, Any]:
    """Scenario 5: SIGKILL one host's master (its workers die with it: PR_SET_PDEATHSIG).

    Only requests that host had in flight may fail: at most one per client, since each
    client waits for its answer. Timed: until HAProxy takes it out of the pool; then it is
    restarted and rejoins.
    """
    host = cluster.hosts[name]
    pid = host.master_pid()
    assert pid is not None
    workers = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    load.window()
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    host.wait_gone(pid, 10)
    for worker in workers:
        wait_for(lambda w=worker: not alive(w), 10, what=f"worker {worker} gone with its master")
    wait_for(lambda: not cluster.lb.in_pool(name), 30, what=f"HAProxy takes {name} out")
    left_pool = time.monotonic() - started
    sent = cluster.lb.sessions_sent(name)
    with load.lock:
        before = load.tally.ok
    wait_for(lambda: load.tally.ok >= before + 100, 30, what="100 more requests while the host is out")
    sent_while_out = cluster.lb.sessions_sent(name) - sent
    rejoined = rejoin(cluster, load, host)
    figures = result(load.window(), started)
    figures.update(left_pool_after=left_pool, sent_while_out=sent_while_out, in_flight_bound=len(load.threads),
                   **rejoined)
    return figures


def result(tally: Tally, started: float) -> dict[str, Any]:
    return {"requests": tally.ok + tally.failed, "ok": tally.ok, "failed": tally.failed,
            "failures": dict(tally.failures), "by_host": dict(sorted(tally.by_host.items())),
            "wrong_client": tally.wrong_client, "seconds": round(time.monotonic() - started, 2)}


def describe(name: str, figures: dict[str, Any]) -> str:
    """One line of figures for the test's output (the /readyz samples summed up by phase and status)."""
    shown = dict(figures)
    if "readyz" in shown:
        shown["readyz"] = dict(Counter(f"{phase}:{status}" for phase, status in shown["readyz"]))
    parts = [f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
             for key, value in shown.items() if value is not None]
    return f"{name}: " + " ".join(parts)
