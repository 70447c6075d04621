"""Two facts about the worker's own process that only the kernel knows: its parent's death, its descriptors."""

from __future__ import annotations

import ctypes
import os

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` when the master dies, so no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the event pipe write fails once the master is gone


def open_fds() -> list[int]:
    """Our open descriptors (Linux), without the one listdir used to read them."""
    try:
        listed = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return []
    open_now = []
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue
        open_now.append(fd)
    return open_now
