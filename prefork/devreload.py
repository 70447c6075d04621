"""``--reload``: a watcher process that HUPs the master when the app's Python files change (development).

The watcher is a process of its own (``python -m prefork.devreload``), started
by the master with fork and exec: never a thread in the master, which forks
workers. It uses ``watchfiles`` (the ``dev`` extra), watches every ``*.py``
under the app's directory (site-packages and virtual environments excluded)
and the ``--reload-extra-file`` files, and on a change sends SIGHUP to the
master, which reloads as for any HUP. It dies with the master
(``PR_SET_PDEATHSIG``) and ignores the signals a terminal sends the group.

The master holds it as a :class:`Watcher`: started with the master, started
again after a back-off if it dies (1 s doubling up to 30 s; a watcher that ran
for a minute starts the back-off afresh), terminated when the master exits.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, describe_status

if TYPE_CHECKING:
    import subprocess

    from .settings import Settings

log = logging.getLogger("prefork")

EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", ".venv", "venv", ".tox", ".mypy_cache"}
DEBOUNCE_MS = 300
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
RESTART_START, RESTART_MAX = 1.0, 30.0  # seconds before starting a watcher again after one died
STEADY = 60.0  # a watcher that ran this long before it died starts the back-off afresh


def start_watcher(master_pid: int, directory: str, extra_files: Sequence[str]) -> subprocess.Popen[bytes]:
    """The watcher process for ``directory`` and ``extra_files``; ConfigError without watchfiles."""
    if importlib.util.find_spec("watchfiles") is None:
        raise ConfigError("reload: needs the watchfiles package (pip install 'prefork[dev]')")
    import subprocess  # only with --reload: a plain master does not load it

    argv = [sys.executable, "-m", "prefork.devreload", str(master_pid), directory, *extra_files]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True)
    log.info("--reload: watching *.py under %s%s (watcher pid %d)", directory,
             "".join(f", {name}" for name in extra_files), process.pid)
    return process


class Watcher:
    """The master's side of ``--reload``: its watcher process, and when to start another if it died.

    The master reaps it among its workers (worker_table.py) and hands us every child that was not one.
    """

    def __init__(self, master_pid: int) -> None:
        self.master_pid = master_pid
        self.directory = ""
        self.extra_files: tuple[str, ...] = ()
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.delay = RESTART_START  # the next back-off
        self.restart_at: float | None = None

    def start(self, settings: Settings) -> None:
        """With --reload: watch the working directory and --reload-extra-file (ConfigError without watchfiles)."""
        if settings.reload:
            self.directory, self.extra_files = os.getcwd(), tuple(settings.reload_extra_file)
            self.spawn(time.monotonic())

    def spawn(self, now: float) -> None:
        self.process = start_watcher(self.master_pid, self.directory, self.extra_files)
        self.started, self.restart_at = now, None

    def exited(self, pid: int, status: int, stopping: bool) -> None:
        """A child the master reaped that was not a worker: if it was our watcher, start another later."""
        if self.process is None or pid != self.process.pid:
            return
        self.process.returncode = os.waitstatus_to_exitcode(status)  # reaped by the master's waitpid, not Popen
        self.process = None
        if stopping:
            return
        now = time.monotonic()
        if now - self.started >= STEADY:
            self.delay = RESTART_START
        self.retry(now, f"the file watcher exited ({describe_status(status)})")

    def retry(self, now: float, why: str) -> None:
        log.warning("--reload: %s; starting another in %gs (code changes do not reload until then)", why, self.delay)
        self.restart_at = now + self.delay
        self.delay = min(self.delay * 2, RESTART_MAX)

    def deadline(self) -> float | None:
        """When the master should wake to start the watcher again (None: it runs, or --reload is off)."""
        return self.restart_at

    def restart_if_due(self, now: float) -> None:
        if self.restart_at is None or now < self.restart_at:
            return
        try:
            self.spawn(now)
        except (ConfigError, OSError) as exc:  # watchfiles uninstalled since, no memory to fork: later again
            self.retry(now, f"cannot start the file watcher: {exc}")

    def stop(self) -> None:
        """At the master's exit (it would die with the master anyway: PR_SET_PDEATHSIG)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()


def wanted(directory: Path, extra: set[Path], path: str) -> bool:
    """A Python file under ``directory`` outside the excluded directories, or one of ``extra``."""
    changed = Path(path)
    if changed in extra:
        return True
    if changed.suffix != ".py":
        return False
    try:
        parts = changed.relative_to(directory).parts
    except ValueError:
        return False
    return not EXCLUDED_DIRS.intersection(parts[:-1])


def watch(master_pid: int, directory: Path, extra_files: list[Path]) -> None:
    """Send SIGHUP to ``master_pid`` after each batch of changes; return once the master is gone."""
    import watchfiles

    extra = {path.resolve() for path in extra_files}
    # An extra file's directory, not the file: editors and git replace a file rather than write it.
    parents = {path.parent for path in extra if not path.parent.is_relative_to(directory)}
    roots = [str(directory), *sorted(str(parent) for parent in parents)]

    def keep(change: watchfiles.Change, path: str) -> bool:
        return wanted(directory, extra, os.path.abspath(path))

    for _ in watchfiles.watch(*roots, watch_filter=keep, debounce=DEBOUNCE_MS, raise_interrupt=False):
        if os.getppid() != master_pid:
            return
        os.kill(master_pid, signal.SIGHUP)


def main(argv: list[str]) -> int:
    from .process import set_parent_death_signal

    set_parent_death_signal(signal.SIGTERM)
    for sig in TERMINAL_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    master_pid = int(argv[0])
    if os.getppid() != master_pid:
        return 0
    try:
        watch(master_pid, Path(argv[1]).resolve(), [Path(name) for name in argv[2:]])
    except ProcessLookupError:
        pass  # the master is gone
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
