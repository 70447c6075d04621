"""Taking turns on listeners shared with EPOLLEXCLUSIVE (workers with several listeners, and threads)."""

from __future__ import annotations

import select
import time

# How often a waiter moves to the back of the listeners' wait queues: often enough to
# take turns, rarely enough to cost nothing.
REQUEUE_INTERVAL = 0.002


class TakeTurns:
    """Let the workers (and threads) waiting on the same listeners with EPOLLEXCLUSIVE take turns.

    The kernel wakes the first idle waiter in a listener's wait queue, whose order
    is that of registration and never changes: the same few workers would take
    nearly every connection. Registering again after serving moves us behind every
    waiter that has waited longer, so connections go round the idle ones, as with
    blocking accept(). At most every REQUEUE_INTERVAL: two epoll_ctl calls on every
    connection would cost more than the rest of our per-connection work.
    """

    def __init__(self, poller: select.epoll) -> None:
        self.poller = poller
        self.next_at = 0.0

    def served(self, fd: int) -> None:
        """A connection from listener ``fd`` was served: go to the back of its queue, now and then."""
        now = time.monotonic()
        if now >= self.next_at:
            self.poller.unregister(fd)
            self.poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            self.next_at = now + REQUEUE_INTERVAL
