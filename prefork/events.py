"""The worker -> master event pipe, both ends.

A worker writes ``(pid, event)`` records into a pipe the master created before
forking it; the master reads them from its selector. Eight bytes is far below
PIPE_BUF, so concurrent writers never interleave. The pipe says what shared
memory cannot: "I booted" (so the master may retire the previous generation)
and "I am due to retire" (--max-requests: start my replacement first).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

EVENT = struct.Struct("=ii")
EVENT_BOOTED = 1
EVENT_RETIRE = 2  # served --max-requests: please start my replacement, then stop me


class EventPipe:
    """The pipe; the master keeps the read end, every worker inherits the write end."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self.buffer = b""

    def read(self) -> Iterator[tuple[int, int]]:
        """In the master, when the read end is readable: every whole (pid, event) record that arrived."""
        try:
            self.buffer += os.read(self.read_fd, EVENT.size * 512)
        except BlockingIOError:
            return
        usable = len(self.buffer) - len(self.buffer) % EVENT.size
        records, self.buffer = self.buffer[:usable], self.buffer[usable:]
        yield from EVENT.iter_unpack(records)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)


def tell_master(events_fd: int, event: int) -> None:
    """In a worker: one record, never blocking on a master that is gone."""
    try:
        os.write(events_fd, EVENT.pack(os.getpid(), event))
    except OSError:
        pass  # the master is gone; the parent-death signal ends us
