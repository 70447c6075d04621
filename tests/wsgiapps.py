"""WSGI applications for the HTTP tests, served by real prefork workers with --wsgi.

``app`` (the one most tests use) is wrapped in ``wsgiref.validate.validator``:
any departure from PEP 3333 by the server raises inside the worker, answers
500 and leaves "AssertionError" in the log, which the tests check for.
``raw`` is the same router unwrapped: the validator wraps the result
iterator, which hides ``wsgi.file_wrapper`` from the server, so only ``raw``
takes the sendfile path.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

StartResponse = Callable[..., Any]
TEXT = [("Content-Type", "text/plain")]
FILE_SIZE = 300_000


def read_all(environ: dict[str, Any]) -> bytes:
    """The whole body, in the pieces a careful app asks for (the validator wants one argument)."""
    stream = environ["wsgi.input"]
    parts = []
    while data := stream.read(8192):
        parts.append(data)
    return b"".join(parts)


def ok(start_response: StartResponse, body: bytes, headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response("200 OK", (headers or TEXT) + [("Content-Length", str(len(body)))])
    return [body]


def show_environ(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    keys = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "SERVER_NAME",
            "SERVER_PORT", "REMOTE_ADDR", "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_HOST", "HTTP_COOKIE",
            "HTTP_X_MULTI", "RAW_URI", "wsgi.url_scheme", "wsgi.multithread", "wsgi.input_terminated")
    shown = {key: environ.get(key) for key in keys}
    shown["headers"] = sorted(key for key in environ if key.startswith("HTTP_"))
    return ok(start_response, json.dumps(shown).encode(), [("Content-Type", "application/json")])


def stream(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    """No Content-Length: chunked for HTTP/1.1, close-delimited for HTTP/1.0."""
    start_response("200 OK", TEXT)
    for number in range(5):
        yield f"part {number}\n".encode()


def write_callable(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    write = start_response("200 OK", TEXT)
    write(b"written, ")
    write(b"then ")
    return [b"returned\n"]


def exc_info(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Starts a 200, then fails before any body and replaces it with a 503 (start_response's exc_info)."""
    start_response("200 OK", TEXT)
    try:
        raise ValueError("changed my mind")
    except ValueError:
        start_response("503 Service Unavailable", [*TEXT, ("Content-Length", "6")], sys.exc_info())
    return [b"sorry\n"]


def fail_before(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("failing before start_response, on purpose")


def fail_after(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", TEXT)
    yield b"the beginning"
    raise RuntimeError("failing in the middle of the body, on purpose")


def file_body(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """A file through wsgi.file_wrapper (sendfile when the server sees the wrapper)."""
    path = os.path.join(tempfile.gettempdir(), f"prefork-http-test-{os.getuid()}.bin")
    if not os.path.exists(path) or os.path.getsize(path) != FILE_SIZE:
        with open(path + ".tmp", "wb") as fh:
            fh.write(bytes(range(256)) * (FILE_SIZE // 256) + b"x" * (FILE_SIZE % 256))
        os.replace(path + ".tmp", path)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(path, "rb"), 8192)


def sleep(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    time.sleep(float(environ["QUERY_STRING"] or "0"))
    return ok(start_response, f"{os.getpid()}\n".encode())


def route(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = "/" + environ["PATH_INFO"].rpartition("/")[2]  # /mounted/environ is /environ too
    if path == "/echo":
        return ok(start_response, read_all(environ))
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        return ok(start_response, json.dumps([line.decode() for line in lines]).encode())
    if path == "/ignore-body":  # answers without reading the body
        return ok(start_response, f"{os.getpid()}\n".encode())
    if path == "/no-content":
        start_response("204 No Content", [])
        return []
    handlers = {"/environ": show_environ, "/stream": stream, "/write": write_callable, "/exc-info": exc_info,
                "/fail-before": fail_before, "/fail-after": fail_after, "/file": file_body, "/sleep": sleep}
    handler = handlers.get(path)
    if handler is not None:
        return handler(environ, start_response)
    return ok(start_response, f"{os.getpid()}\n".encode())  # the pid: which worker answered


app = validator(route)
raw = route


def hello(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """The benchmark's hello world."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!\n"]


def record(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """What the application saw of the request, as JSON (tests/test_http_rules.py, test_http_differential.py).

    ``fields``: every ``HTTP_*``, ``CONTENT_TYPE`` and ``CONTENT_LENGTH`` key; ``body``: the
    whole of ``wsgi.input``, latin-1.
    """
    fields = {key: value for key, value in environ.items()
              if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")}
    seen = {"method": environ["REQUEST_METHOD"], "target": environ["RAW_URI"], "path": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"], "protocol": environ["SERVER_PROTOCOL"],
            "server_name": environ["SERVER_NAME"], "remote_addr": environ["REMOTE_ADDR"],
            "fields": fields, "body": read_all(environ).decode("latin-1")}
    if environ["PATH_INFO"] == "/stream":  # no Content-Length: chunked, or close-delimited for HTTP/1.0
        start_response("200 OK", [("Content-Type", "application/json")])
        return iter([json.dumps(seen).encode()])
    return ok(start_response, json.dumps(seen).encode(), [("Content-Type", "application/json")])


def forks(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Fork a child that returns from the app (its answer is written, then it must leave); the parent
    answers ``parent <pid> <child pid> <child status>`` once the child has exited."""
    child = os.fork()
    if child == 0:
        return ok(start_response, b"child\n")
    _, status = os.waitpid(child, 0)
    return ok(start_response, f"parent {os.getpid()} {child} {os.waitstatus_to_exitcode(status)}\n".encode())
