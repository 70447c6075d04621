"""Bytes in, requests out: httptools (llhttp) parses; we keep the limits and queue the results.

llhttp already refuses what request smuggling relies on (Content-Length with
Transfer-Encoding, conflicting Content-Lengths, bad chunk sizes): those, and
any other syntax error, become :class:`HTTPError` 400 and end the connection.
The limits are checked as the bytes arrive, so an over-long line or header is
refused before it is whole.

Pipelined requests parsed from one read wait in :attr:`RequestReader.queue`,
answered in order. Body bytes go to the request they belong to; a request's
body is read from the socket only as its application asks for it, so memory
stays bounded by one read.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import httptools


class HTTPError(Exception):
    """A request we answer ourselves, with ``status``, and then close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Limits(NamedTuple):
    """--limit-request-line, --limit-request-fields, --limit-request-field-size (0 = none)."""

    line: int
    fields: int
    field_size: int

    @property
    def head(self) -> int:
        """Bytes a head may take before it is complete (0 = no limit): line and fields at their limits."""
        if not (self.line and self.fields and self.field_size):
            return 0
        return self.line + 2 + self.fields * (self.field_size + 2) + 2


class Request:
    """One parsed request: its head, and its body as it arrives."""

    __slots__ = ("body_chunks", "complete", "continue_sent", "discard", "expect_continue", "headers",
                 "keep_alive", "method", "url", "version")

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.expect_continue = False
        self.continue_sent = False
        self.body_chunks: deque[bytes] = deque()
        self.complete = False  # the whole body has been parsed
        self.discard = False  # the application is done: drop body bytes still arriving


class RequestReader:
    """The httptools parser of one connection and its callbacks (httptools calls ``on_*``)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.max_head = limits.head
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()  # parsed heads, oldest first: the one being answered
        self.current: Request | None = None  # the request whose bytes are being parsed
        self.head_bytes = 0  # bytes fed since the last head was complete
        self.in_head = True  # between heads' ends: what comes next is a head
        self.head_started = False  # a head has begun but is not complete
        self.error: HTTPError | None = None  # set once: the connection answers it and ends
        self.upgraded = False  # Upgrade requested: what follows is not HTTP/1.1, stop parsing

    @property
    def usable(self) -> bool:
        return self.error is None and not self.upgraded

    @property
    def partial(self) -> bool:
        """Bytes of a next request's head are already here: keep reading, it is on its way."""
        return self.head_started

    def feed(self, data: bytes) -> None:
        """Parse ``data``; a bad request sets :attr:`error` instead of raising."""
        if not self.usable:
            return
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self.error = cause if isinstance(cause, HTTPError) else HTTPError(400, str(cause or exc))
        except httptools.HttpParserUpgrade:
            self.upgraded = True
        except httptools.HttpParserError as exc:
            self.error = HTTPError(400, str(exc) or type(exc).__name__)
        if self.error is None and self.in_head and self.max_head and self.head_bytes > self.max_head:
            self.error = HTTPError(431, "request head too large")

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        self.current = Request()
        self.head_started = True

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url
        if self.limits.line and len(self.current.url) > self.limits.line:
            raise HTTPError(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        limits = self.limits
        request.headers.append((name, value))
        if limits.fields and len(request.headers) > limits.fields:
            raise HTTPError(431, "too many header fields")
        if limits.field_size and len(name) + len(value) + 2 > limits.field_size:
            raise HTTPError(431, "header field too large")
        if len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        parser = self.parser
        request.method = parser.get_method().decode("ascii")
        if self.limits.line and len(request.method) + len(request.url) + 10 > self.limits.line:
            raise HTTPError(414, "request line too long")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.expect_continue = request.expect_continue and request.version == "1.1"
        self.in_head = self.head_started = False
        self.head_bytes = 0
        self.queue.append(request)

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        if not request.discard:
            request.body_chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.in_head = True
