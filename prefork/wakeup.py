"""The self-pipe that turns signals into events of the master's loop.

Signal handlers do nothing themselves: ``signal.set_wakeup_fd`` writes each
signal's number into a non-blocking pipe, which the master's selector watches;
the loop reads the numbers back and dispatches them through its signal table.
The same signals are blocked across fork, so that a child never runs the
master's handlers (nor writes to its pipe) before installing its own.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any


class Wakeup:
    """The pipe, and the handlers that only record."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signals)
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for sig in self.signals:
            signal.signal(sig, _record_only)

    def received(self) -> list[int]:
        """The signals that arrived since the last call, in order, each once."""
        try:
            data = os.read(self.read_fd, 4096)
        except BlockingIOError:
            return []
        return list(dict.fromkeys(data))

    def restore(self) -> None:
        """Default handlers again, and the pipe closed."""
        signal.set_wakeup_fd(-1)
        for sig in self.signals:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.read_fd)
        os.close(self.write_fd)


def _record_only(signum: int, frame: Any) -> None:
    """The Python-level handler does nothing: set_wakeup_fd already queued the signal."""
