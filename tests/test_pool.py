"""The adaptive pool: the worker count follows the load up to --max-workers and back down to --min-workers."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, wait_for
from control_helpers import prefork, snapshot, status_json
from stop_helpers import assert_master_sleeps

from prefork import pool
from prefork.pool import Pool
from prefork.scoreboard import BUSY, IDLE, Scoreboard
from prefork.settings import Settings
from prefork.stats import Stats
from prefork.view import ServerView, Stop, WorkerProcess
from prefork.worker_count import WorkerCount

# --- the decisions, on a view of a server that is never started (no fork, no signals) ---


@dataclass
class View:
    """What the pool reads of the master (view.ServerView), as plain data the test sets."""

    settings: Settings
    count: WorkerCount = field(default_factory=lambda: WorkerCount(1))
    pid: int = 1
    generation: int = 1
    pending: int | None = None
    pending_settings: Settings | None = None
    workers: dict[int, WorkerProcess] = field(default_factory=dict)
    scoreboard: Scoreboard = field(default_factory=lambda: Scoreboard(64))
    stats: Stats = field(default_factory=Stats)
    stopping: Stop | None = None
    shutdown_delay_ends: float | None = None
    new_master: int | None = None
    replaces: int | None = None
    listener_names: Sequence[str] = ()

    @property
    def num_workers(self) -> int:
        return self.count.target


class Master:
    """The pool and the view, and the one thing the master does with the pool's answer (its WorkerCount follows)."""

    def __init__(self, settings: Settings) -> None:
        self.view = View(settings)
        self.pool = Pool()

    def adjust(self, now: float) -> None:
        view: ServerView = self.view
        self.view.count.follow(self.pool.adjust(view, now))


@pytest.fixture
def master() -> Master:
    return Master(Settings(app="testapps:pid", min_workers=1, max_workers=8, spare=1, idle_retire=5.0))


def add_worker(master: Master, state: int = IDLE, booted: bool = True, threads: int = 0, busy: int = 0) -> None:
    """A worker as the master records it, with its slot as the worker would have written it."""
    view = master.view
    index = len(view.workers)
    number = view.scoreboard.allocate(0, index, view.generation)
    assert number is not None
    slot = view.scoreboard.slots[number]
    slot.pid, slot.state, slot.threads, slot.busy_threads = 10_000 + index, state, threads, busy
    view.workers[slot.pid] = WorkerProcess(slot.pid, index, view.generation, number, 0.0, booted=booted)


def test_pool_starts_at_its_minimum(master: Master) -> None:
    master.adjust(100.0)
    assert master.view.num_workers == 1


def test_shortage_grows_the_pool_one_then_doubling_each_second(master: Master) -> None:
    master.adjust(100.0)
    grown = []
    for second in range(1, 5):
        while len(master.view.workers) < master.view.num_workers:
            add_worker(master, state=BUSY)  # every worker the pool adds is taken at once
        master.adjust(100.0 + second)
        grown.append(master.view.num_workers)
    assert grown == [2, 4, 8, 8]  # +1, +2, +4, then --max-workers


def test_checks_at_most_once_a_second(master: Master) -> None:
    master.adjust(100.0)
    add_worker(master, state=BUSY)
    master.adjust(100.5)
    assert master.view.num_workers == 1
    master.adjust(101.0)
    assert master.view.num_workers == 2


def test_booting_workers_count_as_capacity_coming(master: Master) -> None:
    master.adjust(100.0)
    add_worker(master, state=BUSY)
    add_worker(master, booted=False)
    master.pool.size = 2  # as if the last look had grown it
    master.adjust(101.0)
    assert master.view.num_workers == 2


def test_surplus_retires_one_a_second_after_idle_retire(master: Master) -> None:
    master.adjust(100.0)
    for _ in range(4):
        add_worker(master)
    master.pool.size = 4  # grown by an earlier burst
    seen = []
    workers = master.view.workers
    for second in range(1, 9):
        master.adjust(100.0 + second)
        seen.append(master.view.num_workers)
        for worker in [w for w in workers.values() if w.index >= master.view.num_workers]:
            del workers[worker.pid]  # retired
    # Surplus seen at 101; 5 s later (106) one goes, then one a second, down to the minimum.
    assert seen == [4, 4, 4, 4, 4, 3, 2, 1]


def test_a_reload_boots_the_new_generation_at_the_pool_size(master: Master) -> None:
    master.adjust(100.0)
    master.pool.size = 5
    view = master.view
    view.pending, view.pending_settings = 2, view.settings  # what a reload sets...
    view.count.reset(view.settings)  # ...with --workers for the count
    master.adjust(101.0)
    assert view.num_workers == 5


def test_idle_capacity_is_counted_in_threads(master: Master) -> None:
    master.view.settings = Settings(app="testapps:pid", min_workers=1, max_workers=8, spare=1, threads=4)
    master.adjust(100.0)
    add_worker(master, state=BUSY, threads=4, busy=3)  # 1 idle thread < 4 (one spare worker)
    master.adjust(101.0)
    assert master.view.num_workers == 2


def test_a_stopping_server_is_not_resized(master: Master) -> None:
    master.adjust(100.0)
    master.view.stopping = Stop.GRACEFUL
    master.view.count = WorkerCount(3)
    assert master.pool.adjust(master.view, 101.0) is None  # the count is not the pool's to decide
    master.adjust(101.0)
    assert master.view.num_workers == 3


def test_ttin_and_ttou_move_the_count_by_one_and_keep_one_worker() -> None:
    count = WorkerCount(1)
    count.more()
    assert count.target == 2
    for _ in range(3):
        count.fewer()
    assert count.target == 1
    count.follow(None)  # the pool is off: its answer changes nothing
    assert count.target == 1
    count.follow(5)
    assert count.target == 5


# --- the real server ---


def start_pool(server: Server, tmp_path: Path, *args: str, idle_retire: str = "1") -> Path:
    pidfile = tmp_path / "prefork.pid"
    # testapps:echo holds its worker busy until the client closes: load we can switch on and off.
    # --timeout 0: a held connection is load, not a stuck worker.
    server.start("--pid", str(pidfile), "--min-workers", "1", "--max-workers", "4", "--spare", "1",
                 "--idle-retire", idle_retire, "--timeout", "0", *args, app="testapps:echo",
                 workers=None).wait_ready(1)
    return pidfile


def hold_connection(server: Server) -> socket.socket:
    """A connection its worker is serving (busy) until we close it."""
    sock = socket.create_connection(server.address)
    sock.settimeout(30)
    sock.sendall(b"ping")
    assert sock.recv(10) == b"ping"
    return sock


def serving(pidfile: Path) -> list[dict[str, Any]]:
    return [w for w in snapshot(pidfile)["workers"] if w["state"] in ("idle", "busy")]


def test_worker_count_follows_load_up_and_down(server: Server, tmp_path: Path) -> None:
    pidfile = start_pool(server, tmp_path)
    report = status_json(pidfile)
    assert report["master"]["pool"] == {"min_workers": 1, "max_workers": 4, "spare": 1, "idle_retire": 1.0}
    wait_for(lambda: len(serving(pidfile)) == 1, 30, what="the pool at its minimum, one idle worker")
    held: list[socket.socket] = []
    try:
        # Each held connection makes one worker busy; the pool forks so that one stays idle beside
        # them (how many at once depends on how long the shortage lasts: the rate doubles each second).
        for busy in (1, 2, 3):
            sock = socket.create_connection(server.address)
            sock.sendall(b"ping")
            assert sock.recv(10) == b"ping"  # served: a worker is now busy with it
            held.append(sock)
            states = wait_for(lambda b=busy: (s := [w["state"] for w in serving(pidfile)]).count("busy") == b
                              and "idle" in s and s, 30, what=f"{busy} busy workers and a spare")
            assert len(states) <= 4
        # At --max-workers: a fourth held connection leaves no spare, and no fifth worker comes.
        sock = socket.create_connection(server.address)
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
        held.append(sock)
        wait_for(lambda: [w["state"] for w in serving(pidfile)] == ["busy"] * 4, 30, what="4 busy workers")
        assert status_json(pidfile)["master"]["target_workers"] == 4
    finally:
        for sock in held:
            sock.close()
    # Load gone: surplus idle workers retire, one a second after --idle-retire, down to the minimum.
    wait_for(lambda: len(server.worker_pids()) == 1, 60, what="the pool back at one worker")
    assert status_json(pidfile)["master"]["target_workers"] == 1
    assert "pool: " in server.log()


def test_a_stopping_master_sleeps_with_the_pool_on(server: Server, tmp_path: Path) -> None:
    """A graceful stop ends the pool's looks at the scoreboard, and with them its once-a-second deadline: the
    master sleeps until its workers leave (it used to wake at once, forever: the look's deadline stayed past)."""
    start_pool(server, tmp_path)
    with hold_connection(server):  # in flight: the graceful stop waits for it (up to 30 s)
        server.signal(signal.SIGTERM)
        wait_for(lambda: "graceful stop" in server.log(), 10, what="the graceful stop")
        time.sleep(pool.CHECK_INTERVAL + 0.5)  # past the look the pool would have taken next
        assert_master_sleeps(server.pid)
    assert server.wait_exit(30) == 0


def test_scale_refuses_an_adaptive_pool(server: Server, tmp_path: Path) -> None:
    pidfile = start_pool(server, tmp_path)
    result = prefork("scale", "3", "--pid", str(pidfile))
    assert result.returncode == 6 and "adaptive pool" in result.stderr


def test_spare_capacity_is_counted_in_threads(server: Server, tmp_path: Path) -> None:
    pidfile = start_pool(server, tmp_path, "--threads", "2")
    wait_for(lambda: len(serving(pidfile)) == 1, 30, what="one worker of two threads")
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
        # One thread of two busy: less than a whole worker (two threads) idle, so a second worker comes.
        wait_for(lambda: len(serving(pidfile)) == 2, 30, what="a second worker")


def settled_size(pidfile: Path, busy: int) -> int | None:
    """The pool's size once ``busy`` workers are busy, the spare is idle and nothing still boots."""
    report = snapshot(pidfile)
    states = [w["state"] for w in report["workers"]]
    settled = (states.count("busy") == busy and "idle" in states and "booting" not in states
               and len(states) == report["master"]["target_workers"])
    return len(states) if settled else None


def test_reload_keeps_the_pool_size(server: Server, tmp_path: Path) -> None:
    pidfile = start_pool(server, tmp_path, idle_retire="60")
    held = [hold_connection(server), hold_connection(server)]
    try:
        grown = wait_for(lambda: settled_size(pidfile, busy=2), 30, what="the pool grown past 2 busy workers")
        result = prefork("reload", "--pid", str(pidfile))
        assert result.returncode == 0, result.stderr
        # The new generation booted at the pool's size, not at --workers (the CPU count).
        assert result.stdout.strip() == f"reloaded: generation 2 serving with {grown} workers"
        assert len([w for w in snapshot(pidfile)["workers"] if w["generation"] == 2]) == grown
    finally:
        for sock in held:
            sock.close()
