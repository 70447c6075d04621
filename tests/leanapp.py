"""A WSGI app that imports nothing: what a --wsgi worker holds is prefork's doing (tests/test_startup.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any


def modules(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The names of the modules this worker has loaded, one a line."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["\n".join(sorted(sys.modules)).encode()]


def note_modules(server: Any) -> None:
    """A when_ready hook: the master's modules, one a line, into the file $LEANAPP_MODULES."""
    with open(os.environ["LEANAPP_MODULES"], "w") as out:
        out.write("\n".join(sorted(sys.modules)))
