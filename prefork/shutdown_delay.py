"""``--shutdown-delay``: after TERM the server serves on normally for a while, then stops gracefully.

The delay gives load balancers time to take this host out of their pool (its
``/readyz`` says 503 "shutdown delay" from the TERM on: ``view.phase``) before
its listeners stop taking connections. The master only records when the delay
ends, a deadline of its selector; a TERM during the delay ends it at once.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("prefork")


class ShutdownDelay:
    """When the delay a TERM began ends (``view.ServerView.shutdown_delay_ends``)."""

    def __init__(self) -> None:
        self.ends: float | None = None  # time.monotonic(); None until a TERM with --shutdown-delay

    def begin(self, seconds: float) -> bool:
        """TERM: serve on for ``seconds``. False when the graceful stop starts now instead: no delay was
        asked for, or this TERM came during the delay and ends it."""
        if self.ends is not None:
            log.info("TERM during the shutdown delay: stopping now")
            return False
        if not seconds:
            return False
        self.ends = time.monotonic() + seconds
        log.info("shutdown delay: serving normally for %gs before stopping", seconds)
        return True

    def over(self, now: float) -> bool:
        """Whether a delay began and has run out."""
        return self.ends is not None and now >= self.ends
