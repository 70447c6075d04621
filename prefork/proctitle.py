"""Process titles for ps and top: ``prefork: master [NAME]``, ``prefork: worker [NAME] ...``."""

from __future__ import annotations

import os

# setproctitle rewrites the environ area to make room for long titles, which
# clobbers /proc/PID/environ; SPT_NOENV keeps it to argv's space. It must be set
# before setproctitle first runs, which is at import.
os.environ.setdefault("SPT_NOENV", "1")

import setproctitle


def set_title(title: str) -> None:
    setproctitle.setproctitle(f"prefork: {title}")
