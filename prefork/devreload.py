"""``--reload``: a watcher process that HUPs the master when the app's Python files change (development).

The watcher is a process of its own (``python -m prefork.devreload``), started
by the master with fork and exec: never a thread in the master, which forks
workers. It uses ``watchfiles`` (the ``dev`` extra), watches every ``*.py``
under the app's directory (site-packages and virtual environments excluded)
and the ``--reload-extra-file`` files, and on a change sends SIGHUP to the
master, which reloads as for any HUP. It dies with the master
(``PR_SET_PDEATHSIG``) and ignores the signals a terminal sends the group.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger("prefork")

EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", ".venv", "venv", ".tox", ".mypy_cache"}
DEBOUNCE_MS = 300
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)


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
