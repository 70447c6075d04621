"""The scoreboard: one shared-memory slot per worker, written by the worker, read by the master.

The master maps it before forking, so every worker inherits the same pages.
A worker writes its own slot on every connection (two stores, no system
call); the master reads it to find stuck workers and, later, to report
status. An idle worker blocked in accept() never has to wake up to prove it
is alive: its slot simply says "idle".
"""

from __future__ import annotations

import ctypes
import mmap
import time

FREE, BOOTING, IDLE, BUSY, STOPPING = range(5)
STATE_NAMES = {FREE: "free", BOOTING: "booting", IDLE: "idle", BUSY: "busy", STOPPING: "stopping"}
PEER_BYTES = 62


class Slot(ctypes.Structure):
    """One worker's row. Doubles and 64-bit counters are naturally aligned, so stores are atomic."""

    _fields_ = [
        ("busy_since", ctypes.c_double),  # time.monotonic() when the current connection began
        ("started", ctypes.c_double),  # time.time() when the worker was forked
        ("requests", ctypes.c_uint64),  # connections served
        ("pid", ctypes.c_int32),
        ("generation", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("state", ctypes.c_uint8),
        ("peer_len", ctypes.c_uint8),
        ("peer", ctypes.c_char * PEER_BYTES),
        # --threads: how many threads accept, and how many serve now (busy_since/peer are then the oldest's)
        ("threads", ctypes.c_uint16),
        ("busy_threads", ctypes.c_uint16),
        # --exec: programs that exited non-zero or were killed, and those killed for --timeout (inetd.py)
        ("program_failures", ctypes.c_uint32),
        ("program_timeouts", ctypes.c_uint32),
        # --exec: the running program's process group (its pid; 0 when none), for the master to kill with the
        # worker: a worker SIGKILLed before it could end the group would leave the program's children behind.
        ("program_group", ctypes.c_int32),
        # Set by the master at fork: the worker waits in epoll (threads, kept-alive connections), so the
        # listeners must stay non-blocking while it runs.
        ("in_epoll", ctypes.c_uint8),
    ]

    # The peer last written through this object (a worker's own, the slot's only writer): a kept-alive
    # connection's next request, from the same peer, writes it no more. Not a field: never shared.
    shown = ""

    def begin(self, peer: str) -> None:
        """Mark the slot busy with a connection from ``peer``."""
        if peer != self.shown:
            self.set_peer(peer)
        self.busy_since = time.monotonic()
        self.state = BUSY

    def set_peer(self, peer: str) -> None:
        """Record who the connection is from (again, once a PROXY header names the real client)."""
        raw = peer.encode("utf-8", "replace")[:PEER_BYTES]
        self.peer = raw  # ctypes copies in C: ten times cheaper than memmove from Python
        self.peer_len = len(raw)
        self.shown = peer

    def end(self) -> None:
        """Mark the connection finished and counted."""
        self.requests += 1
        self.state = IDLE

    @property
    def peer_text(self) -> str:
        return bytes(self.peer[: self.peer_len]).decode("utf-8", "replace")


class Header(ctypes.Structure):
    _fields_ = [
        ("master_pid", ctypes.c_int32),
        ("shutting_down", ctypes.c_uint8),  # workers drain the accept queue before leaving
        # One past the highest slot ever allocated: readers scan only slots[:high_water].
        ("high_water", ctypes.c_uint32),
    ]


class Scoreboard:
    """A fixed table of :class:`Slot` in an anonymous shared mapping."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        size = ctypes.sizeof(Header) + capacity * ctypes.sizeof(Slot)
        # Anonymous and MAP_SHARED: inherited by fork, shared with every worker.
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        self.header = Header.from_buffer(self._map, 0)
        self.slots = (Slot * capacity).from_buffer(self._map, ctypes.sizeof(Header))
        self._free = list(range(capacity - 1, -1, -1))

    def allocate(self, pid_placeholder: int, index: int, generation: int) -> int | None:
        """Take a free slot for a new worker (in the master); None when the table is full."""
        if not self._free:
            return None
        number = self._free.pop()
        slot = self.slots[number]
        ctypes.memset(ctypes.addressof(slot), 0, ctypes.sizeof(Slot))
        slot.pid = pid_placeholder
        slot.index = index
        slot.generation = generation
        slot.started = time.time()
        slot.state = BOOTING
        self.header.high_water = max(self.header.high_water, number + 1)
        return number

    def release(self, number: int) -> None:
        """Give a dead worker's slot back (in the master)."""
        self.slots[number].state = FREE
        self._free.append(number)
