"""The client commands (``prefork status|reload|stop|scale``): find the master, ask it, wait for the change.

The pid file names the master; changes are made with the same signals an
operator would send, and each command then polls the control socket
(``protocol.py``) until the change has happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psutil

from . import protocol, status_table
from .errors import ControlError, NotRunningError, UsageError
from .pidfile import pid_in_file
from .protocol import MASTER_TITLE, control_path
from .settings import FIELDS
from .values import Number

QUERY_TIMEOUT = 5.0
MAX_ANSWER = 64 << 20  # bytes; 4096 workers take about 1.5 MB
POLL_INTERVAL = 0.1




def find_master(pidfile: str) -> int:
    """The pid of the prefork master named by ``pidfile``; NotRunningError for none or a stale file."""
    pid = pid_in_file(pidfile)  # NotRunningError for anything but a pid (never blocks)
    try:
        process = psutil.Process(pid)
        title = " ".join(process.cmdline())
        gone = process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        title, gone = "", True
    if gone:
        raise NotRunningError(f"no server running: stale pid file {pidfile} (process {pid} does not exist)")
    if not title.startswith(MASTER_TITLE):
        raise NotRunningError(f"no server running: stale pid file {pidfile} "
                              f"(process {pid} is not a prefork master: {title[:60]!r})")
    return pid


def query(pidfile: str, timeout: float = QUERY_TIMEOUT, command: str = protocol.STATUS) -> dict[str, Any]:
    """Ask the master for its status (or another ``command``) over its control socket."""
    find_master(pidfile)
    path = control_path(pidfile)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(protocol.request(command))
            answer = _read_answer(sock, time.monotonic() + timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunningError(f"the master at {pidfile} has no control socket ({path})") from None
        except OSError as exc:
            raise ControlError(f"cannot query the master through {path}: {exc.strerror or exc}") from None
    try:
        return protocol.decode(answer, command)
    except ValueError as exc:
        error = _error_in(answer)
        if error is not None:
            raise ControlError(f"the master at {pidfile} answered: {error!r}") from None
        raise ControlError(f"the master at {pidfile} gave a malformed answer ({exc})") from None


def _read_answer(sock: socket.socket, deadline: float) -> bytes:
    """Everything until the master closes: at most MAX_ANSWER bytes, by the deadline (TimeoutError)."""
    chunks, size = [], 0
    while data := sock.recv(65536):
        chunks.append(data)
        size += len(data)
        if size > MAX_ANSWER:
            raise OSError(0, f"the answer is longer than {MAX_ANSWER} bytes")
        if time.monotonic() > deadline:
            raise TimeoutError(0, "timed out")
    return b"".join(chunks)


def _error_in(answer: bytes) -> str | None:
    """The text of an ``{"error": ...}`` answer, if that is what it is."""
    try:
        document = json.loads(answer)
    except (ValueError, RecursionError):
        return None
    error = document.get("error") if isinstance(document, dict) else None
    return error[:200] if isinstance(error, str) else None


def send_signal(pidfile: str, sig: int) -> int:
    pid = find_master(pidfile)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise NotRunningError(f"no server running: process {pid} exited") from None
    return pid


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; ControlError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ControlError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def show_status(pidfile: str, as_json: bool, watch: bool, out: Callable[[str], None]) -> None:
    """Print the status once, or redraw it every second (``--watch``) until interrupted."""
    sampler = status_table.Sampler()
    report = query(pidfile)
    sampler.measure(report)  # the first look only primes CPU %
    time.sleep(0.25)
    while True:
        sampler.measure(report)
        if as_json:
            out(json.dumps(report, indent=None if watch else 2))
        else:
            out(("\x1b[H\x1b[2J" if watch else "") + status_table.render(report))
        if not watch:
            return
        time.sleep(1.0)
        report = query(pidfile)


def reload(pidfile: str, timeout: float) -> str:
    """HUP, then wait until the new generation serves (or the master reports the reload failed)."""
    before = query(pidfile)["stats"]
    send_signal(pidfile, signal.SIGHUP)

    def finished() -> dict[str, Any] | None:
        report = query(pidfile)
        stats = report["stats"]
        if stats["reload_failures"] > before["reload_failures"]:
            raise ControlError(f"reload failed: {stats['last_reload_error']}; the previous generation keeps serving")
        if stats["reloads"] > before["reloads"] and report["master"]["pending_generation"] is None:
            return report
        return None

    report = wait_until(finished, timeout, "the new generation to boot")
    m = report["master"]
    return f"reloaded: generation {m['generation']} serving with {m['target_workers']} workers"


STOP_MARGIN = 10.0  # seconds beyond the server's own bounds: reaping, exit, a loaded machine


def stop(pidfile: str, fast: bool, timeout: float | None) -> str:
    """TERM (graceful) or QUIT (fast), then wait for the master to exit."""
    if timeout is None:
        timeout = stop_wait(query(pidfile)["master"], fast)
    pid = send_signal(pidfile, signal.SIGQUIT if fast else signal.SIGTERM)
    wait_until(lambda: not _alive(pid), timeout, f"master {pid} to exit")
    return f"stopped: master {pid} exited ({'fast' if fast else 'graceful'} stop)"


def stop_wait(master: dict[str, Any], fast: bool) -> float:
    """How long a correct stop may take: a graceful one, the server's shutdown delay and graceful
    timeout (from its status snapshot); either, a margin."""
    if fast:
        return STOP_MARGIN
    return float(master.get("shutdown_delay", 0.0)) + float(master["graceful_timeout"]) + STOP_MARGIN


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def parse_scale(spec: str) -> tuple[int, bool]:
    """``N`` (set the worker count), ``+N`` or ``-N`` (change it): the amount, and whether it is a change.

    UsageError for anything else, before the master is contacted.
    """
    text = spec.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,9}", text):
        raise UsageError(f"{spec!r} is not a worker count (expected N, +N or -N)")
    amount, relative = int(text), text[0] in "+-"
    if not relative:
        _check_count(amount, f"cannot scale to {amount} workers")
    return amount, relative


def _check_count(wanted: int, what: str) -> None:
    bounds: Number = FIELDS["workers"].metadata["meta"].parse  # as --workers is bounded
    if not bounds.minimum <= wanted <= bounds.maximum:
        raise UsageError(f"{what} (expected {bounds.bounds})")


def scale(pidfile: str, change: tuple[int, bool], timeout: float) -> str:
    """TTIN/TTOU one at a time (signals of one kind coalesce), then wait for the workers to match."""
    report = query(pidfile)
    if report["master"].get("pool"):
        raise ControlError("the adaptive pool (--max-workers) sizes this server; scale does not apply")
    before = report["master"]["target_workers"]
    amount, relative = change
    wanted = before + amount if relative else amount
    _check_count(wanted, f"cannot scale from {before} to {wanted} workers")
    deadline = time.monotonic() + timeout
    target = before
    while target != wanted:
        step = signal.SIGTTIN if wanted > target else signal.SIGTTOU
        send_signal(pidfile, step)
        target = wait_until(partial(_target_moved, pidfile, target), max(0.0, deadline - time.monotonic()),
                            f"the master to act on {signal.Signals(step).name}")
    wait_until(lambda: _workers_match(pidfile, wanted), max(0.0, deadline - time.monotonic()),
               f"{wanted} workers to be serving")
    return f"scaled: {before} -> {wanted} workers"


def _target_moved(pidfile: str, was: int) -> int | None:
    target = int(query(pidfile)["master"]["target_workers"])
    return target if target != was else None


def _workers_match(pidfile: str, wanted: int) -> bool:
    """Exactly ``wanted`` workers of the serving generation have booted, and no others remain."""
    report = query(pidfile)
    generation = report["master"]["generation"]
    workers = report["workers"]
    serving = [w for w in workers if w["generation"] == generation and w["state"] not in ("booting", "stopping")]
    return len(serving) == wanted and len(workers) == wanted


def dump(pidfile: str, index: int | None, timeout: float) -> str:
    """Make the serving generation's workers (or worker ``index``) write their stacks; return them.

    The stacks come through the master (which also logs them): its ``stacks`` answer is
    polled until each worker signalled has written one since, or has exited (said in its
    place; a ControlError when every one did)."""
    from .stacks import DUMP_SIGNAL

    report = query(pidfile)
    generation = report["master"]["generation"]
    targets = [w for w in report["workers"] if w["generation"] == generation and w["state"] in ("idle", "busy")
               and (index is None or w["index"] == index)]
    if not targets:
        which = f"worker {index}" if index is not None else "workers"
        raise ControlError(f"no serving {which} of generation {generation} to dump")
    before = query(pidfile, command=protocol.STACKS)["seq"]
    for worker in targets:
        try:
            os.kill(worker["pid"], DUMP_SIGNAL)
        except ProcessLookupError:
            pass  # gone since: nothing to wait for below but the others

    def written() -> tuple[dict[int, str], list[dict[str, Any]]] | None:
        stacks = query(pidfile, command=protocol.STACKS)["stacks"]
        fresh = {w["pid"]: stacks[str(w["pid"])]["stack"] for w in targets
                 if stacks.get(str(w["pid"]), {}).get("seq", 0) > before}
        # A worker that exited (killed, retired, crashed) before its handler ran will never write.
        alive = {w["pid"] for w in query(pidfile)["workers"]}
        gone = [w for w in targets if w["pid"] not in fresh and w["pid"] not in alive]
        return (fresh, gone) if len(fresh) + len(gone) == len(targets) else None

    fresh, gone = wait_until(written, timeout, "the workers' stacks")
    if not fresh:
        raise ControlError("; ".join(f"{_worker_name(w)} exited before its stack was fetched" for w in gone))
    return "\n".join(f"{_worker_name(w)}:\n{fresh[w['pid']].rstrip()}\n" if w["pid"] in fresh
                     else f"{_worker_name(w)}: exited before its stack was fetched\n" for w in targets)


def _worker_name(worker: dict[str, Any]) -> str:
    return f"worker {worker['index']} gen {worker['generation']} (pid {worker['pid']})"
