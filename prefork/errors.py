"""Exceptions raised at the boundaries, and the exit statuses they map to.

Only the CLI turns these into exit statuses (see ``cli.py``); deeper code raises.
"""

from __future__ import annotations

import os
import signal

# Exit statuses of the ``prefork`` command (documented in the README).
EXIT_OK = 0
EXIT_BIND = 1  # address in use, permission denied, stale unix socket owned by a live server
EXIT_USAGE = 2  # bad option, argument or config value, or one past its bounds (`--timeout inf`, `scale 0`)
EXIT_BOOT = 3  # workers failed to boot again and again
EXIT_APP = 4  # the APP could not be imported
EXIT_NOT_RUNNING = 5  # a control command found no server at the pid file (missing or stale)
EXIT_CONTROL = 6  # a control command's change failed or did not happen in time

# Exit statuses of a worker process, read by the master from waitpid().
WORKER_EXIT_OK = 0
WORKER_EXIT_ERROR = 1  # unexpected error in the worker's own code
WORKER_EXIT_BOOT = 3  # a hook or the boot sequence failed
WORKER_EXIT_APP = 4  # the app could not be imported


def describe_status(status: int) -> str:
    """``exit status 3`` or ``killed by SIGKILL``, from a waitpid() status."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


class PreforkError(Exception):
    """Base class of the errors prefork reports to a person in one line."""

    exit_status = EXIT_USAGE


class ConfigError(PreforkError):
    """A setting has a wrong name, type or value."""

    exit_status = EXIT_USAGE


class UsageError(PreforkError):
    """A command's argument is wrong (found before anything is contacted or changed)."""

    exit_status = EXIT_USAGE


class BindError(PreforkError):
    """A listening socket could not be created, bound or inherited."""

    exit_status = EXIT_BIND


class AppImportError(PreforkError):
    """``module:attribute`` could not be imported or is not callable."""

    exit_status = EXIT_APP

    def __init__(self, message: str, *, show_traceback: bool = False) -> None:
        super().__init__(message)
        # True when the app's own code raised while importing: the traceback is
        # the cause a person needs, not noise.
        self.show_traceback = show_traceback


class BootError(PreforkError):
    """Workers kept dying before they could serve."""

    exit_status = EXIT_BOOT


class NotRunningError(PreforkError):
    """No prefork master runs at the pid file a control command was given."""

    exit_status = EXIT_NOT_RUNNING


class ControlError(PreforkError):
    """A control command's change failed (a reload refused) or did not happen in time."""

    exit_status = EXIT_CONTROL
