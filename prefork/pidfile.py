"""The master's pid file, written atomically so a reader never sees it half-written."""

from __future__ import annotations

import os
import tempfile


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid = 0

    def write(self, pid: int) -> None:
        """Write ``pid`` to a temporary file in the same directory, then rename over the target."""
        directory = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".prefork-pid-", dir=directory)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{pid}\n")
            os.chmod(tmp, 0o644)
            os.rename(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self.pid = pid

    def rename(self, new_path: str) -> None:
        """Move the file aside (``FILE.oldbin`` during a binary upgrade)."""
        os.rename(self.path, new_path)
        self.path = new_path

    def remove(self) -> None:
        """Remove the file, but only if it still names us (an upgraded master may own it now)."""
        try:
            with open(self.path) as fh:
                if fh.read().strip() != str(self.pid):
                    return
            os.unlink(self.path)
        except (FileNotFoundError, ValueError):
            pass


def read_pid(path: str) -> int | None:
    """The pid in ``path``, or None if the file is missing or malformed."""
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None
