"""Two facts about the worker's own process that only the kernel knows: its parent's death, its descriptors."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the event pipe write fails once the master is gone


# Looked up once, where this module is imported (the master), not in each worker after fork: loading
# the library and making the function object there wrote ~100 KB of pages the worker shared (its USS).
PRCTL = find_prctl()


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` when the master dies, so no worker outlives it."""
    if PRCTL is not None:
        PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


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
