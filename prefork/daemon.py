"""``--daemon``: detach from the terminal, for running outside systemd.

The classic double fork: the first child calls setsid() to leave the terminal's
session; the second is no session leader, so opening a terminal can never make
it acquire one again. The standard streams go to /dev/null. The working
directory is kept (the app and relative paths were resolved against it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from .errors import ConfigError


def refuse_under_systemd(environ: Mapping[str, str]) -> None:
    """systemd tracks the process it started: a daemon that forks away from it breaks Type=notify."""
    if environ.get("NOTIFY_SOCKET"):
        raise ConfigError(
            "--daemon cannot be used under systemd (NOTIFY_SOCKET is set): systemd already runs prefork "
            "in the background and tracks its pid; leave --daemon off"
        )


def daemonize() -> None:
    """Detach; return in the grandchild. The original process and the first child leave with status 0."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
