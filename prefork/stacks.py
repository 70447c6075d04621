"""Workers' Python stacks: each worker's faulthandler writes into a pipe of its own, which the master reads.

A worker's stack is written by faulthandler from a signal handler (so it comes
even when the worker is stuck in C code): on SIGABRT (``--timeout``,
``--boot-timeout``), on a crash, and on :data:`DUMP_SIGNAL` (``prefork dump``,
which stops nothing). faulthandler's writes carry no end; after a dump the
worker's own Python handler adds :data:`STACK_END` as soon as it runs (the next
bytecode: at once, unless the worker is stuck in C). The master gathers the
bytes in its loop and, at that mark, once the pipe has been quiet for
:data:`QUIET` seconds, or once the worker has exited, logs the stack as one
record with a ``stack`` field (one JSON object with ``--log-format json``), and
keeps the latest stack of each live worker for ``prefork dump`` to fetch.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from functools import partial

from .record import dataclass, field
from .view import Stop, WorkerProcess

log = logging.getLogger("prefork")

DUMP_SIGNAL = signal.SIGUSR2  # to a worker: write every thread's stack, carry on (the master's USR2 upgrades)
# Seconds without more bytes that end a stack with no STACK_END (a worker stuck in C): long enough that a
# worker the scheduler leaves waiting midway through faulthandler's many small writes is not cut in two.
QUIET = 1.0
STACK_END = b"\0"  # written by a worker after faulthandler's dump (never in faulthandler's text)
READ_SIZE = 65536


@dataclass
class StackPipe:
    """The master's end of one worker's stack pipe and the bytes read from it so far."""

    fd: int
    worker: WorkerProcess
    data: bytearray = field(default_factory=bytearray)
    last_read: float = 0.0


@dataclass(frozen=True)
class Stack:
    seq: int  # one more for every stack the master has read, whichever worker's
    text: str


class Stacks:
    """Every live worker's stack pipe, registered in the master's selector; the latest stack of each."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.pipes: dict[int, StackPipe] = {}  # by descriptor
        self.latest: dict[int, Stack] = {}  # by worker pid
        self.seq = 0

    @staticmethod
    def new_pipe() -> tuple[int, int]:
        """(read end, write end) for a worker about to be forked: the worker keeps the write end."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read_fd, False)
        return read_fd, write_fd

    def watch(self, read_fd: int, worker: WorkerProcess) -> None:
        pipe = StackPipe(read_fd, worker)
        self.pipes[read_fd] = pipe
        self.selector.register(read_fd, selectors.EVENT_READ, partial(self.read, pipe))

    def fds(self) -> list[int]:
        """Our read ends, which a newly forked worker closes."""
        return list(self.pipes)

    def read(self, pipe: StackPipe) -> None:
        try:
            data = os.read(pipe.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            *complete, rest = data.split(STACK_END)
            for part in complete:
                pipe.data += part
                self.flush(pipe)
            pipe.data += rest
            pipe.last_read = time.monotonic()
            return
        self.selector.unregister(pipe.fd)  # EOF: the worker has exited
        os.close(pipe.fd)
        del self.pipes[pipe.fd]
        self.flush(pipe)
        self.latest.pop(pipe.worker.pid, None)

    def deadline(self) -> float | None:
        """When the stack being written now is taken as complete (for the master's selector)."""
        pending = [pipe.last_read + QUIET for pipe in self.pipes.values() if pipe.data]
        return min(pending) if pending else None

    def flush_due(self, now: float) -> None:
        for pipe in list(self.pipes.values()):
            if pipe.data and now >= pipe.last_read + QUIET:
                self.flush(pipe)

    def flush(self, pipe: StackPipe) -> None:
        """Log what the pipe held as one record naming the worker, and keep it as its latest stack."""
        if not pipe.data:
            return
        text = pipe.data.decode("utf-8", "replace")
        pipe.data.clear()
        worker = pipe.worker
        self.seq += 1
        self.latest[worker.pid] = Stack(self.seq, text)
        killed = worker.stopping is Stop.KILL
        log.log(logging.ERROR if killed else logging.INFO, "%s: Python stack%s", worker.describe(),
                " (as it was killed)" if killed else "",
                extra={"stack": text, "stack_of": (worker.pid, worker.index, worker.generation)})

    def close(self) -> None:
        for pipe in list(self.pipes.values()):
            self.flush(pipe)
            self.selector.unregister(pipe.fd)
            os.close(pipe.fd)
        self.pipes.clear()

    def answer(self) -> dict[str, object]:
        """The latest stack of each live worker, for the control socket's ``stacks`` request."""
        return {"seq": self.seq, "stacks": {str(pid): {"seq": s.seq, "stack": s.text}
                                            for pid, s in self.latest.items()}}
