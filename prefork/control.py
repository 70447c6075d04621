"""The master's control socket, and the commands that drive a running server through it.

In the master, :func:`open_endpoints` adds the control socket (``PIDFILE.ctl``,
mode 0600: status shows peers and counters, so it is the owner's) and the
``--metrics-bind`` listener to its selector. A query is one line
(``status``) and the answer one JSON document.

In a client (``prefork status|reload|stop|scale``), the pid file names the
master; changes are made with the same signals an operator would send, and
each command then polls the control socket until the change has happened.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psutil

from . import metrics, status
from .endpoint import Endpoint
from .errors import BindError, ControlError, NotRunningError
from .pidfile import read_pid
from .sockets import create_listener
from .view import ServerView

log = logging.getLogger("prefork")

MASTER_TITLE = "prefork: master"
CONTROL_NAME = "control socket"
QUERY_TIMEOUT = 5.0
POLL_INTERVAL = 0.1

# --- in the master ---


def control_path(pidfile: str) -> str:
    """Where the control socket of the master owning ``pidfile`` listens."""
    return os.path.abspath(pidfile) + ".ctl"


def open_endpoints(master: ServerView, selector: selectors.BaseSelector, pidfile: str | None) -> list[Endpoint]:
    """The control socket (when there is a pid file) and the metrics listener (when asked for),
    answered from ``selector``."""
    endpoints = []
    if pidfile is not None:
        endpoint = open_control_socket(master, selector, control_path(pidfile))
        if endpoint is not None:
            endpoints.append(endpoint)
    address = master.settings.metrics_bind
    if address is not None:
        try:
            # SO_REUSEPORT: during a binary upgrade the new master binds it beside us.
            listener = create_listener(address, 64, reuse_port=address.kind == "tcp")
        except BindError as exc:
            if master.replaces is None:
                raise  # stops the start, as for --bind
            log.warning("no metrics in this upgraded master: %s", exc)
            return endpoints
        endpoints.append(Endpoint(listener.sock, f"metrics on {listener.name}", selector,
                                  partial(metrics.answer_http, master), b"\r\n\r\n", on_close=listener.unlink))
    return endpoints


def open_control_socket(master: ServerView, selector: selectors.BaseSelector, path: str) -> Endpoint | None:
    """Bind ``path`` owner-only from the start; without it the server still serves, so only warn."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask applies at bind(): no moment where another user could connect.
    old_umask = os.umask(0o177)
    try:
        try:
            os.unlink(path)  # a dead master's; a live one at the same pid file lost it with its pid file
        except FileNotFoundError:
            pass
        sock.bind(path)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        log.warning("no control socket at %s: %s", path, exc.strerror or exc)
        return None
    finally:
        os.umask(old_umask)
    inode = os.stat(path).st_ino
    return Endpoint(sock, CONTROL_NAME, selector, partial(answer_control, master), b"\n",
                    on_close=partial(unlink_if_ours, path, inode))


def reclaim_control_socket(master: ServerView, endpoints: list[Endpoint], selector: selectors.BaseSelector,
                           pidfile: str) -> list[Endpoint]:
    """After a failed binary upgrade the new master took our path (and removed it as it died).

    Returns ``endpoints`` with our control endpoint closed and replaced by one bound again
    (or by none, if it could not be bound)."""
    kept = []
    for endpoint in endpoints:
        if endpoint.name == CONTROL_NAME:
            endpoint.close()
        else:
            kept.append(endpoint)
    new = open_control_socket(master, selector, control_path(pidfile))
    return kept if new is None else [*kept, new]


def answer_control(master: ServerView, request: bytes) -> bytes:
    command = request.decode("utf-8", "replace").strip() or "status"
    if command == "status":
        return json.dumps(status.snapshot(master)).encode() + b"\n"
    return json.dumps({"error": f"unknown command {command!r}"}).encode() + b"\n"


def unlink_if_ours(path: str, inode: int) -> None:
    """Remove our socket file, unless a newer master (a binary upgrade) has bound its own there."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


# --- in a client ---


def find_master(pidfile: str) -> int:
    """The pid of the prefork master named by ``pidfile``; NotRunningError for none or a stale file."""
    pid = read_pid(pidfile)
    if pid is None:
        if not os.path.exists(pidfile):
            raise NotRunningError(f"no server running: pid file {pidfile} does not exist")
        raise NotRunningError(f"no server running: pid file {pidfile} holds no pid")
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


def query(pidfile: str, timeout: float = QUERY_TIMEOUT) -> dict[str, Any]:
    """Ask the master for its status over its control socket."""
    find_master(pidfile)
    path = control_path(pidfile)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(b"status\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunningError(f"the master at {pidfile} has no control socket ({path})") from None
        except OSError as exc:
            raise ControlError(f"cannot query the master through {path}: {exc.strerror or exc}") from None
    try:
        report: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"the master at {pidfile} gave a malformed answer") from None
    return report


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
    sampler = status.Sampler()
    report = query(pidfile)
    sampler.measure(report)  # the first look only primes CPU %
    time.sleep(0.25)
    while True:
        sampler.measure(report)
        if as_json:
            out(json.dumps(report, indent=None if watch else 2))
        else:
            out(("\x1b[H\x1b[2J" if watch else "") + status.render(report))
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


def stop(pidfile: str, graceful: bool, timeout: float | None) -> str:
    """TERM (graceful) or QUIT (fast), then wait for the master to exit."""
    if timeout is None:
        # A graceful stop may take the server's whole graceful timeout; a fast one is quick.
        timeout = 10.0 + (query(pidfile)["master"]["graceful_timeout"] if graceful else 0.0)
    pid = send_signal(pidfile, signal.SIGTERM if graceful else signal.SIGQUIT)
    wait_until(lambda: not _alive(pid), timeout, f"master {pid} to exit")
    return f"stopped: master {pid} exited ({'graceful' if graceful else 'fast'} stop)"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def parse_scale(spec: str, current: int) -> int:
    """``N`` sets the worker count; ``+N`` and ``-N`` change it."""
    text = spec.strip()
    try:
        amount = int(text)
    except ValueError:
        raise ControlError(f"{spec!r} is not a worker count (expected N, +N or -N)") from None
    wanted = current + amount if text[:1] in "+-" else amount
    if wanted < 1:
        raise ControlError(f"cannot scale to {wanted} workers (at least 1)")
    return wanted


def scale(pidfile: str, spec: str, timeout: float) -> str:
    """TTIN/TTOU one at a time (signals of one kind coalesce), then wait for the workers to match."""
    report = query(pidfile)
    if report["master"].get("pool"):
        raise ControlError("the adaptive pool (--max-workers) sizes this server; scale does not apply")
    before = report["master"]["target_workers"]
    wanted = parse_scale(spec, before)
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
