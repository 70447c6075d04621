"""A WSGI app that imports nothing: what a --wsgi worker holds is prefork's doing (tests/test_startup.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def modules(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The names of the modules this worker has loaded, one a line."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["\n".join(sorted(sys.modules)).encode()]
