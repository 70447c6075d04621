"""Bytes in, requests out: httptools (llhttp) parses; we keep the limits and the rules, and queue the results.

llhttp already refuses what request smuggling relies on (Content-Length with
Transfer-Encoding, conflicting Content-Lengths, bad chunk sizes, obs-fold,
bare LF): those, and any other syntax error, become :class:`HTTPError` 400 and
end the connection. Where llhttp is looser than RFC 9110/9112, the callbacks
below enforce the rule (the README's HTTP rule table lists them all): trailing
whitespace is not part of a field value, one Host (required in HTTP/1.1), only
the chunked transfer coding and only as the last one, no Transfer-Encoding in
HTTP/1.0, HTTP/1.x only. The checks cost a length test per field and a few
comparisons per request: a field name is lowered only when its length is that
of a field we look at.

Where llhttp is stricter, prefork reads the body itself (framing.py): llhttp
stops at the end of a chunked request's head (we raise from its callback) or
of an Upgrade request's head. Chunked bodies are rare, so finding where such a
body starts in the bytes llhttp was given costs nothing on the common path.

The limits are checked as the bytes arrive, so an over-long line or header is
refused before it is whole.

Pipelined requests parsed from one read wait in :attr:`RequestReader.queue`,
answered in order. Body bytes go to the request they belong to; a request's
body is read from the socket only as its application asks for it, so memory
stays bounded by one read.
"""

from __future__ import annotations

from collections import deque

import httptools

from .framing import ChunkedBody, LengthBody
from .message import HTTPError, Limits, Request

__all__ = ["HTTPError", "Limits", "Request", "RequestReader"]


# The field names the rules look at, and their lengths (a name of another length is not lowered).
WATCHED_NAMES = frozenset((b"host", b"expect", b"content-length", b"transfer-encoding"))
WATCHED_LENGTHS = frozenset(len(name) for name in WATCHED_NAMES)
# The usual methods as the str they become (any other is decoded).
METHODS = {method.encode(): method for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
KNOWN_CODINGS = (b"chunked",)  # the transfer codings we decode; any other is answered 501 (RFC 9110 15.6.2)


class ChunkedHead(Exception):
    """Raised from a callback to stop llhttp at the end of a chunked request's head: we read its body."""


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
        self.own: LengthBody | ChunkedBody | None = None  # the body we read ourselves, while it lasts
        self.data = b""  # the bytes being fed (read only to tell an HTTP/0.9 line from "HTTP/0.9")
        # Where llhttp was when the bytes being fed began: how many queued heads, whether a head
        # had begun (and its last bytes), how much of a body was still to come.
        self.mark = 0
        self.started_in_head = False
        self.tail = b""
        self.body_left = 0

    def new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # Any HTTP/d.d reaches on_headers_complete, which answers 505 for a major version other than 1
        # (llhttp would answer 400).
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    @property
    def usable(self) -> bool:
        return self.error is None and (not self.upgraded or self.own is not None)

    @property
    def partial(self) -> bool:
        """Bytes of a next request's head are already here: keep reading, it is on its way."""
        return self.head_started

    def feed(self, data: bytes) -> None:
        """Parse ``data``; a bad request sets :attr:`error` instead of raising."""
        try:
            if data and self.own is None and self.error is None and not self.upgraded:
                data = self.feed_parser(data)  # the common case: llhttp takes it all, no loop
            while data and self.usable:
                own = self.own
                if own is None:
                    data = self.feed_parser(data)
                    continue
                rest = own.feed(data)
                if rest is None:
                    return
                self.end_own_body(own.request)
                data = rest
        except HTTPError as exc:  # from a body we read ourselves
            self.error = exc

    def feed_parser(self, data: bytes) -> bytes:
        """Feed llhttp; what follows the head of a request whose body we read ourselves (else b"")."""
        if self.in_head:
            self.head_bytes += len(data)
            self.body_left = 0
        else:  # in a Content-Length body begun in an earlier read
            assert self.current is not None
            self.body_left = int(self.current.content_length or b"0") - self.current.received
        self.data = data
        self.mark = len(self.queue)
        self.started_in_head = self.head_started
        rest = b""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True  # llhttp skipped its body, as if the protocol had switched
            rest = self.read_body_ourselves(data[exc.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ChunkedHead):
                rest = self.read_body_ourselves(data[self.body_offset(data):])
            else:
                self.error = cause if isinstance(cause, HTTPError) else HTTPError(400, str(cause or exc))
        except httptools.HttpParserError as exc:
            self.error = HTTPError(400, str(exc) or type(exc).__name__)
        if self.error is None and self.in_head and self.max_head and self.head_bytes > self.max_head:
            self.error = HTTPError(431, "request head too large")
        if self.head_started:  # the head goes on in the next read: keep what may begin its empty line
            self.tail = (self.tail + data)[-3:]
        return rest

    def read_body_ourselves(self, rest: bytes) -> bytes:
        """The last queued request's body is ours to read (chunked, or after Upgrade): start at ``rest``."""

        request = self.queue[-1]
        if request.transfer_encoding is not None:
            self.own = ChunkedBody(request, self.limits)
        elif request.content_length.strip(b"0"):
            self.own = LengthBody(request, int(request.content_length))
        else:
            return b""  # an Upgrade without a body: nothing more to read
        request.complete = False
        self.in_head = False
        return rest

    def end_own_body(self, request: Request) -> None:
        request.complete = True
        self.own = None
        self.in_head = True
        self.head_bytes = 0
        if not self.upgraded:
            self.parser = self.new_parser()  # the old one stopped with an error at the head's end

    def body_offset(self, data: bytes) -> int:
        """Where, in ``data``, the body of the chunked request llhttp stopped at begins.

        llhttp does not say where it stopped, so we walk the heads it completed
        in ``data``: each ends at the first empty line (llhttp refuses bare LF), each
        Content-Length body is that long. Only a chunked request pays for this.
        """
        pos = self.body_left
        heads = list(self.queue)[self.mark:]
        for index, request in enumerate(heads):
            if index == 0 and self.started_in_head:
                pos = (self.tail + data).find(b"\r\n\r\n") + 4 - len(self.tail)
            else:
                while data[pos:pos + 1] in (b"\r", b"\n"):
                    pos += 1  # empty lines before a request line
                pos = data.find(b"\r\n\r\n", pos) + 4
            if index < len(heads) - 1:
                pos += int(request.content_length or b"0")
        return pos

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
        if value[-1:] <= b" ":  # ends in SP or HTAB (or is empty): llhttp keeps trailing whitespace
            value = value.rstrip(b" \t")
        request.headers.append((name, value))
        if limits.fields and len(request.headers) > limits.fields:
            raise HTTPError(431, "too many header fields")
        if limits.field_size and len(name) + len(value) + 2 > limits.field_size:
            raise HTTPError(431, "header field too large")
        if len(name) in WATCHED_LENGTHS:
            lower = name.lower()
            if lower == b"host":  # every request has one: no call for it
                if request.has_host:
                    raise HTTPError(400, "more than one Host field")
                request.has_host = True
            elif lower in WATCHED_NAMES:
                self.watch(request, lower, value)

    def watch(self, request: Request, name: bytes, value: bytes) -> None:
        """Note the fields whose rules are checked once the head is whole."""
        if name == b"expect":
            request.expect_continue = value.lower() == b"100-continue"
        elif name == b"content-length":
            request.content_length = value
        elif name == b"transfer-encoding":
            te = request.transfer_encoding
            request.transfer_encoding = value if te is None else te + b"," + value

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        parser = self.parser
        method = parser.get_method()
        request.method = METHODS.get(method) or method.decode("ascii")
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
        if request.transfer_encoding is not None:
            self.upgraded = parser.should_upgrade()  # llhttp has not stopped for it yet
            raise ChunkedHead

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        request.received += len(body)
        if not request.discard:
            request.body_chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.in_head = True

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
