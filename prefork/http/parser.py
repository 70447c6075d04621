"""Bytes in, requests out: httptools (llhttp) parses; we keep the limits and the rules, and queue the results.

llhttp already refuses what request smuggling relies on (Content-Length with
Transfer-Encoding, conflicting Content-Lengths, bad chunk sizes, obs-fold,
bare LF): those, and any other syntax error, become :class:`HTTPError` 400 and
end the connection. Where llhttp is looser than RFC 9110/9112, the callbacks
below enforce the rule (the README's HTTP rule table lists them all): trailer
fields never join the header section, trailing whitespace is not part of a
field value, one Host (required in HTTP/1.1), only the chunked transfer coding
and only as the last one, no Transfer-Encoding in HTTP/1.0, HTTP/1.x only.
The checks cost a length test per field and a few comparisons per request: a
field name is lowered only when its length is that of a field we look at.

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


# The field names the rules look at, and their lengths (a name of another length is not lowered).
WATCHED_NAMES = frozenset((b"host", b"expect", b"content-length", b"transfer-encoding"))
WATCHED_LENGTHS = frozenset(len(name) for name in WATCHED_NAMES)
OWS_BYTES = (0x20, 0x09)  # SP, HTAB: a field value's trailing whitespace is not part of it (RFC 9112 5)
KNOWN_CODINGS = (b"chunked",)  # the transfer codings we decode; any other is answered 501 (RFC 9110 15.6.2)


class UpgradeBodyRead(Exception):
    """Raised from a callback to stop llhttp after the body of a request that asked for Upgrade."""


class Request:
    """One parsed request: its head, and its body as it arrives."""

    __slots__ = ("body_chunks", "complete", "content_length", "continue_sent", "discard", "expect_continue",
                 "has_host", "headers", "keep_alive", "method", "transfer_encoding", "url", "version")

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
        self.has_host = False
        self.content_length = b""  # the field's value, kept for a request llhttp stops at (Upgrade)
        self.transfer_encoding: bytes | None = None  # every Transfer-Encoding field line, joined with ","


class RequestReader:
    """The httptools parser of one connection and its callbacks (httptools calls ``on_*``)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.max_head = limits.head
        self.parser = self.new_parser()
        self.queue: deque[Request] = deque()  # parsed heads, oldest first: the one being answered
        self.current: Request | None = None  # the request whose bytes are being parsed
        self.head_bytes = 0  # bytes fed since the last head was complete
        self.in_head = True  # between heads' ends: what comes next is a head
        self.head_started = False  # a head has begun but is not complete
        self.error: HTTPError | None = None  # set once: the connection answers it and ends
        self.upgraded = False  # Upgrade or CONNECT asked: no request is parsed after this one
        self.resumed: Request | None = None  # that request, while we still parse its body
        self.data = b""  # the bytes being fed (read only to tell an HTTP/0.9 line from "HTTP/0.9")

    def new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # "5 ;ext" is valid (BWS before ";", RFC 9112 7.1.1); any HTTP/d.d reaches on_headers_complete,
        # which answers 505 for a major version other than 1 (llhttp would answer 400).
        parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True, lenient_version=True)
        return parser

    @property
    def usable(self) -> bool:
        return self.error is None and (not self.upgraded or self.resumed is not None)

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
        self.data = data
        try:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                self.upgraded = True
                self.read_upgrade_body(data[exc.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, UpgradeBodyRead):
                self.error = cause if isinstance(cause, HTTPError) else HTTPError(400, str(cause or exc))
        except httptools.HttpParserError as exc:
            self.error = HTTPError(400, str(exc) or type(exc).__name__)
        if self.error is None and self.in_head and self.max_head and self.head_bytes > self.max_head:
            self.error = HTTPError(431, "request head too large")

    def read_upgrade_body(self, rest: bytes) -> None:
        """llhttp stopped after the head of a request asking for Upgrade (or CONNECT), skipping its body.

        We never switch protocols (RFC 9110 7.8 lets a server ignore Upgrade), but
        the body is this request's: a new parser reads it, told its framing by a
        head of our own, and stops at its end (nothing after it is parsed).
        """
        request = self.queue[-1]
        if request.transfer_encoding is not None:
            framing = b"Transfer-Encoding: chunked"
        elif request.content_length.strip(b"0"):
            framing = b"Content-Length: " + request.content_length
        else:
            return
        request.complete = False
        self.resumed = request
        self.parser = self.new_parser()
        self.parser.feed_data(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n" + rest)

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
        if limits.field_size and len(name) + len(value) + 2 > limits.field_size:
            raise HTTPError(431, "header field too large")
        if not self.head_started:
            return  # a trailer field: never merged into the header section (RFC 9110 6.5.1), dropped
        if value and value[-1] in OWS_BYTES:
            value = value.rstrip(b" \t")
        request.headers.append((name, value))
        if limits.fields and len(request.headers) > limits.fields:
            raise HTTPError(431, "too many header fields")
        if len(name) in WATCHED_LENGTHS:
            lower = name.lower()
            if lower in WATCHED_NAMES:
                self.watch(request, lower, value)

    def watch(self, request: Request, name: bytes, value: bytes) -> None:
        """Note the fields whose rules are checked once the head is whole."""
        if name == b"host":
            if request.has_host:
                raise HTTPError(400, "more than one Host field")
            request.has_host = True
        elif name == b"expect":
            request.expect_continue = value.lower() == b"100-continue"
        elif name == b"content-length":
            request.content_length = value
        elif name == b"transfer-encoding":
            te = request.transfer_encoding
            request.transfer_encoding = value if te is None else te + b"," + value

    def on_headers_complete(self) -> None:
        if self.resumed is not None:  # our own head before an upgrade request's body: the body is its
            self.current = self.resumed
            self.in_head = self.head_started = False
            return
        request = self.current
        assert request is not None
        parser = self.parser
        request.method = parser.get_method().decode("ascii")
        if self.limits.line and len(request.method) + len(request.url) + 10 > self.limits.line:
            raise HTTPError(414, "request line too long")
        version = parser.get_http_version()
        if version != "1.1":
            version = self.checked_version(version)
        if version == "1.1" and not request.has_host:
            raise HTTPError(400, "no Host field in an HTTP/1.1 request")
        if request.transfer_encoding is not None:
            check_transfer_coding(request.transfer_encoding, version)
        request.version = version
        request.keep_alive = parser.should_keep_alive()
        request.expect_continue = request.expect_continue and version == "1.1"
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
        if self.resumed is not None:
            self.resumed = None
            raise UpgradeBodyRead  # parse nothing after it

    def checked_version(self, version: str) -> str:
        """HTTP/1.0 as itself, any other 1.x as 1.1 (RFC 9110 2.5); else 505, or 400 with no version."""
        if version == "1.0":
            return version
        if version[0] == "1":
            return "1.1"
        if version == "0.9" and b" HTTP/0.9" not in self.data:
            raise HTTPError(400, "no HTTP version in the request line")
        raise HTTPError(505, f"HTTP/{version} is not supported")


def check_transfer_coding(value: bytes, version: str) -> None:
    """Transfer-Encoding framing we can read: chunked, last and once, in HTTP/1.1 (RFC 9112 6.1, 6.3)."""
    if version == "1.0":
        raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
    codings = [coding.strip().lower() for coding in value.split(b",")]
    if b"chunked" in codings and (codings[-1] != b"chunked" or codings.count(b"chunked") > 1):
        raise HTTPError(400, "chunked must be the last transfer coding, and only once")
    for coding in codings:
        if coding not in KNOWN_CODINGS:
            raise HTTPError(501, f"transfer coding {coding.decode('latin-1')!r} is not supported")
