"""Binary upgrade (USR2), nginx/unicorn style: re-execute prefork and hand it our listeners.

The old master forks; the child puts the listening sockets at descriptors 3, 4, ...
and executes the same command line again (``sys.executable`` with
``sys.orig_argv``, so ``python -m prefork`` and the console script both come back
as they started), with the systemd variables LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES
describing them: the new master reads them exactly as it reads socket activation.
UPGRADE_VAR tells the new master which master it replaces; once its own workers
have booted it sends that master WINCH ("you have been replaced"), and the old
master retires its workers gracefully and exits by itself.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from . import proctitle
from .errors import describe_status
from .pidfile import Pidfile
from .sockets import SD_LISTEN_FDS_START, Listener

if TYPE_CHECKING:
    from .systemd import Notifier

log = logging.getLogger("prefork")

UPGRADE_VAR = "_PREFORK_UPGRADE_FROM"
# One 1 or 0 per listener: whether the new master may unlink it at exit (never a socket systemd made).
OWNED_VAR = "_PREFORK_UPGRADE_OWNED"
# Descriptors are first moved above this, so that placing them at 3.. cannot clobber one another.
HIGH_FD = 1000


def spawn_new_master(listeners: list[Listener], extra_env: dict[str, str] | None = None) -> int:
    """Fork and exec a new master holding ``listeners``; return its pid (in the old master).

    ``extra_env`` adds what the master took out of its own environment (systemd's NOTIFY_SOCKET).
    """
    argv = [sys.executable, *sys.orig_argv[1:]]
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        exec_new_master(argv, listeners, extra_env or {})
    finally:
        os._exit(127)  # exec failed: the old master sees this status and keeps serving


def exec_new_master(argv: list[str], listeners: list[Listener], extra_env: dict[str, str]) -> None:
    """In the forked child: arrange descriptors and environment, then exec (never returns)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    high = [fcntl.fcntl(lst.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD) for lst in listeners]
    for offset, fd in enumerate(high):
        os.dup2(fd, SD_LISTEN_FDS_START + offset, inheritable=True)
    env = {**os.environ, **extra_env}
    env["LISTEN_PID"] = str(os.getpid())
    env["LISTEN_FDS"] = str(len(listeners))
    env["LISTEN_FDNAMES"] = ":".join("inherited" for _ in listeners)
    env[UPGRADE_VAR] = str(os.getppid())
    env[OWNED_VAR] = "".join("1" if lst.owned else "0" for lst in listeners)
    os.execve(argv[0], argv, env)


def upgraded_from(environ: dict[str, str] | os._Environ[str]) -> int | None:
    """The pid of the master we replace, if we were started by a USR2 upgrade (and still its child)."""
    value = environ.pop(UPGRADE_VAR, None)
    if value is None or not value.isdigit():
        return None
    old = int(value)
    return old if os.getppid() == old else None


def inherited_ownership(environ: dict[str, str] | os._Environ[str], count: int) -> list[bool]:
    """For each of ``count`` inherited listeners: ours to unlink at exit? Only if an old master made it."""
    flags = environ.pop(OWNED_VAR, "")
    return [flags[index : index + 1] == "1" for index in range(count)]


# --- the old master's side ---


class Upgrade:
    """A binary upgrade seen from a master: the successor it started, or the master it replaces."""

    def __init__(self) -> None:
        self.new_master: int | None = None  # pid of the master a USR2 upgrade started
        self.replaces: int | None = None  # pid of the master we were started to replace

    @property
    def under_way(self) -> bool:
        """Another master serves on our sockets: the one we started, or the one we have not yet retired."""
        return self.new_master is not None or self.replaces is not None

    def start(self, listeners: list[Listener], extra_env: dict[str, str], pidfile: Pidfile | None,
              blocked: tuple[int, ...]) -> bool:
        """USR2: move the pid file aside and start the new master on ``listeners``; False if it could not start."""
        if pidfile is not None:
            pidfile.rename(pidfile.path + ".oldbin")
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.new_master = spawn_new_master(listeners, extra_env)
        except OSError as exc:
            log.error("upgrade failed: cannot start a new master: %s", exc.strerror)
            self.failed(pidfile)
            return False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("upgrade: started new master (pid %d); serving until it is ready", self.new_master)
        return True

    def replaced(self, notifier: Notifier, proc_name: str) -> bool:
        """WINCH: if we started an upgrade, our successor serves now. Fall silent and say so (True): the
        caller leaves it our sockets, retires our workers gracefully and exits.

        WINCH also comes from terminal resizes, so it means nothing unless we started an upgrade.
        """
        if self.new_master is None:
            return False
        log.info("upgrade: new master (pid %d) is serving; retiring this one", self.new_master)
        notifier.hand_over()  # it speaks for the service now: our STOPPING=1 would stop it too
        proctitle.set_title(f"master (old) [{proc_name}]")
        return True

    def failed(self, pidfile: Pidfile | None, why: str = "") -> None:
        """The new master died before it served: take the pid file back (the caller reclaims the control socket)."""
        if why:
            log.error("upgrade failed: new master %s; this master keeps serving", why)
        self.new_master = None
        if pidfile is not None and pidfile.path.endswith(".oldbin"):
            pidfile.rename(pidfile.path[: -len(".oldbin")])

    def new_master_exited(self, status: int, pidfile: Pidfile | None, retiring: bool) -> bool:
        """The new master exited; True if it failed (before it served), and our control socket needs binding again."""
        if retiring:
            self.new_master = None  # we were retiring anyway
            return False
        self.failed(pidfile, f"exited before it was ready ({describe_status(status)})")
        return True

    def tell_replaced_master(self) -> None:
        """After an upgrade, once our first generation serves, ask the old master to retire."""
        if self.replaces is None:
            return
        log.info("upgrade: serving; asking the old master (pid %d) to retire", self.replaces)
        try:
            os.kill(self.replaces, signal.SIGWINCH)
        except ProcessLookupError:
            pass
        self.replaces = None

