"""The WSGI applications every server in bench/http_bench.py runs (the same for each).

``hello``: a fixed text answer on every path but ``/slow``, which sleeps 50 ms
first (the mixed load's slow path). ``flask_app`` (bench.flask_app) is the
framework row's application; it is imported only by the servers that run it.
"""

from __future__ import annotations

import time
from typing import Any

SLOW_SECONDS = 0.05
BODY = b"Hello, world!\n"


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/slow":
        time.sleep(SLOW_SECONDS)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
