"""Binary upgrade (USR2), nginx/unicorn style: re-execute prefork and hand it our listeners.

The new master puts the listening sockets at descriptors 3, 4, ... and executes the
same command line again (``sys.executable`` with ``sys.orig_argv``, so ``python -m
prefork`` and the console script both come back as they started), with the systemd
variables LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES describing them: it reads them exactly
as it reads socket activation. UPGRADE_VAR tells it which master it replaces; once its
own workers have booted it sends that master WINCH ("you have been replaced"), and the
old master retires its workers gracefully and exits by itself.

The new master is not the old master's child. The old master forks an intermediate
process, which forks the new master and exits at once, so that the new master is
adopted by whoever reaps orphans: PID 1, or the nearest subreaper (``systemd --user``
is one). Under a service manager that is the service manager itself, which must be
the parent of the process it is told is the service's main one (``MAINPID=``):
systemd treats a main process that is not its child as alien ("Supervising process N
which is not our child"), does not wait for it when stopping, and SIGKILLs the whole
service at once. Outside a service manager it changes nothing that one can see: an
old master's successor was orphaned anyway when the old master exited.

The old master still learns reliably how the upgrade went: WINCH when the new master
serves, or its pidfd (``pidfd_open``) turning readable when it exits before that.
The new master waits, before it executes, until the old master holds that pidfd and
has reaped the intermediate: so its exit cannot go unseen, and by the time it runs
prefork (and can say ``MAINPID=``) it already has its new parent. It recognises the
master it replaces by pid and start time (UPGRADE_VAR), never by ``getppid()``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import selectors
import signal
import sys
from functools import partial
from typing import TYPE_CHECKING

from . import proctitle
from .pidfile import Pidfile
from .record import dataclass
from .sockets import SD_LISTEN_FDS_START, Listener
from .view import ServerView, StopState, generation_booted

if TYPE_CHECKING:
    from .control import Endpoints
    from .systemd import Notifier

log = logging.getLogger("prefork")

UPGRADE_VAR = "_PREFORK_UPGRADE_FROM"  # "PID:START": the old master's pid and start time (clock ticks)
# One 1 or 0 per listener: whether the new master may unlink it at exit (never a socket systemd made).
OWNED_VAR = "_PREFORK_UPGRADE_OWNED"
# Descriptors are first moved above this, so that placing them at 3.. cannot clobber one another.
HIGH_FD = 1000
GO = b"1"  # old master -> new master, before its exec: "I hold your pidfd; go on"


@dataclass
class NewMaster:
    """The old master's handle on the master it started: its pid, and a pidfd readable once it exits."""

    pid: int
    pidfd: int

    def fileno(self) -> int:
        return self.pidfd

    def close(self) -> None:
        os.close(self.pidfd)


@dataclass(frozen=True)
class OldMaster:
    """The new master's idea of the master it replaces: a pid, and that process's start time."""

    pid: int
    started: int  # clock ticks since boot (/proc/PID/stat), telling it from a later process with its pid

    def signal(self, sig: int) -> None:
        """Send ``sig``; ProcessLookupError if the old master is gone (its pid may be someone else's now)."""
        pidfd = os.pidfd_open(self.pid)  # held while we check, so the pid cannot change hands in between
        try:
            if start_time(self.pid) != self.started:
                raise ProcessLookupError(self.pid)
            signal.pidfd_send_signal(pidfd, sig)
        finally:
            os.close(pidfd)


def spawn_new_master(listeners: list[Listener], extra_env: dict[str, str] | None = None) -> NewMaster:
    """Start a new master holding ``listeners``, adopted by the service manager; OSError if we cannot.

    ``extra_env`` adds what the master took out of its own environment (systemd's NOTIFY_SOCKET).
    The two short waits here (for the intermediate's one write, then its exit) take as long as a fork.
    """
    argv = [sys.executable, *sys.orig_argv[1:]]
    replaces = f"{os.getpid()}:{start_time(os.getpid())}"
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)  # intermediate -> old master: the new master's pid
    go_r, go_w = os.pipe2(os.O_CLOEXEC)  # old master -> new master: GO, or EOF to give up
    try:
        intermediate = os.fork()
        if intermediate == 0:
            try:
                os.close(pid_r)
                os.close(go_w)  # else the new master, waiting for GO, would hold its own pipe open
                start_orphan(argv, listeners, {**(extra_env or {}), UPGRADE_VAR: replaces}, go_r, pid_w)
            finally:
                os._exit(1)
        os.close(pid_w)
        pid_w = -1
        answer = read_all(pid_r)
        os.waitpid(intermediate, 0)  # the new master is now the reaper's child, no longer in our family
        if not answer.isdigit():
            raise OSError(f"the intermediate process could not fork the new master ({answer.decode()!r})")
        pid = int(answer)
        pidfd = os.pidfd_open(pid)  # ProcessLookupError if it died already: no GO, and it is gone
        try:
            os.write(go_w, GO)
        except OSError:
            os.close(pidfd)
            raise
        return NewMaster(pid, pidfd)
    finally:
        for fd in (pid_r, pid_w, go_r, go_w):
            if fd >= 0:
                os.close(fd)


def start_orphan(argv: list[str], listeners: list[Listener], env: dict[str, str], go_r: int, pid_w: int) -> None:
    """In the intermediate process: fork the new master, tell the old master its pid, exit (never returns)."""
    try:
        try:
            pid = os.fork()
        except OSError as exc:
            os.write(pid_w, f"fork: {exc.strerror}".encode())
            return
        if pid == 0:
            try:
                os.close(pid_w)
                if os.read(go_r, len(GO)) == GO:
                    exec_new_master(argv, listeners, env)
            finally:
                os._exit(127)  # no go, or exec failed: the old master sees us exit and keeps serving
        os.write(pid_w, str(pid).encode())
    finally:
        os._exit(0)


def exec_new_master(argv: list[str], listeners: list[Listener], extra_env: dict[str, str]) -> None:
    """In the new master, before it is one: arrange descriptors and environment, then exec (never returns)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    high = [fcntl.fcntl(lst.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD) for lst in listeners]
    for offset, fd in enumerate(high):
        os.dup2(fd, SD_LISTEN_FDS_START + offset, inheritable=True)
    env = {**os.environ, **extra_env}
    env["LISTEN_PID"] = str(os.getpid())
    env["LISTEN_FDS"] = str(len(listeners))
    env["LISTEN_FDNAMES"] = ":".join("inherited" for _ in listeners)
    env[OWNED_VAR] = "".join("1" if lst.owned else "0" for lst in listeners)
    os.execve(argv[0], argv, env)


def upgraded_from(environ: dict[str, str] | os._Environ[str]) -> OldMaster | None:
    """The master we replace, if a USR2 upgrade started us and that master is still running."""
    pid, _, started = environ.pop(UPGRADE_VAR, "").partition(":")
    if not (pid.isdigit() and started.isdigit()):
        return None
    old = OldMaster(int(pid), int(started))
    return old if start_time(old.pid) == old.started else None


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()  # the name before ")" may hold spaces
    except OSError:
        return None
    return int(fields[19])


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 64):
        chunks.append(chunk)
    return b"".join(chunks)


def inherited_ownership(environ: dict[str, str] | os._Environ[str], count: int) -> list[bool]:
    """For each of ``count`` inherited listeners: ours to unlink at exit? Only if an old master made it."""
    flags = environ.pop(OWNED_VAR, "")
    return [flags[index : index + 1] == "1" for index in range(count)]


# --- the old master's side ---


class Upgrade:
    """A binary upgrade seen from a master: the successor it started, or the master it replaces.

    The successor is not our child (see the module's docstring): no SIGCHLD tells us it exited,
    its pidfd does, registered with the master's ``selector`` while it boots. If it fails, we fall
    back: the pid file and the control socket (the ``pidfile`` and ``endpoints`` :meth:`start` is given:
    the endpoints answer from the master's view, which reads this object, so they cannot come first) are
    ours again. ``stop`` is the master's stop state: a successor that exits while we retire anyway is no failure.
    """

    def __init__(self, selector: selectors.BaseSelector, stop: StopState) -> None:
        self.selector, self.stop = selector, stop
        self.new_master: NewMaster | None = None  # the master a USR2 upgrade started
        self.replaces: OldMaster | None = None  # the master we were started to replace

    @property
    def new_master_pid(self) -> int | None:
        return self.new_master.pid if self.new_master is not None else None

    @property
    def replaces_pid(self) -> int | None:
        return self.replaces.pid if self.replaces is not None else None

    @property
    def under_way(self) -> bool:
        """Another master serves on our sockets: the one we started, or the one we have not yet retired."""
        return self.new_master is not None or self.replaces is not None

    def start(self, listeners: list[Listener], extra_env: dict[str, str], pidfile: Pidfile | None,
              endpoints: Endpoints, blocked: tuple[int, ...]) -> None:
        """USR2: move the pid file aside and start the new master on ``listeners`` (if it cannot start, fall back)."""
        if pidfile is not None:
            pidfile.rename(pidfile.path + ".oldbin")
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.new_master = spawn_new_master(listeners, extra_env)
        except OSError as exc:
            log.error("upgrade failed: cannot start a new master: %s", exc.strerror or exc)
            self.failed(pidfile, endpoints)
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # Called from the master's loop if the new master exits (it is not our child: no SIGCHLD tells us).
        exited = partial(self.new_master_exited, pidfile, endpoints)
        self.selector.register(self.new_master.fileno(), selectors.EVENT_READ, exited)
        log.info("upgrade: started new master (pid %d); serving until it is ready", self.new_master.pid)

    def replaced(self, notifier: Notifier, proc_name: str) -> bool:
        """WINCH: if we started an upgrade, our successor serves now. Fall silent and say so (True): the
        caller leaves it our sockets, retires our workers gracefully and exits.

        WINCH also comes from terminal resizes, so it means nothing unless we started an upgrade.
        """
        if self.new_master is None:
            return False
        log.info("upgrade: new master (pid %d) is serving; retiring this one", self.new_master.pid)
        notifier.hand_over()  # it speaks for the service now: our STOPPING=1 would stop it too
        proctitle.set_title(f"master (old) [{proc_name}]")
        return True

    def failed(self, pidfile: Pidfile | None, endpoints: Endpoints, why: str = "") -> None:
        """The new master died before it served: take the pid file back, and bind our control socket again
        (the new master may have taken its path)."""
        if why:
            log.error("upgrade failed: new master %s; this master keeps serving", why)
        self.forget_new_master()
        if pidfile is not None and pidfile.path.endswith(".oldbin"):
            pidfile.rename(pidfile.path[: -len(".oldbin")])
        endpoints.reclaim()

    def new_master_exited(self, pidfile: Pidfile | None, endpoints: Endpoints) -> None:
        """Its pidfd is readable: if we were not retiring anyway, it failed (before it served).

        Its exit status went to its reaper (the service manager, PID 1); its own log says why it failed.
        """
        if self.stop.how is not None:
            self.forget_new_master()  # we were retiring anyway
        else:
            self.failed(pidfile, endpoints, "exited before it was ready")

    def forget_new_master(self) -> None:
        """Let go of the new master's pidfd (it failed, or we exit)."""
        if self.new_master is not None:
            self.selector.unregister(self.new_master.fileno())
            self.new_master.close()
            self.new_master = None

    def tell_replaced_master(self, view: ServerView) -> None:
        """After an upgrade, once our first generation serves (each of its workers booted), ask the old master
        to retire."""
        if self.replaces is None or not generation_booted(view, view.generation):
            return
        log.info("upgrade: serving; asking the old master (pid %d) to retire", self.replaces.pid)
        try:
            self.replaces.signal(signal.SIGWINCH)
        except ProcessLookupError:
            pass
        self.replaces = None
