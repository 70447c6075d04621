"""The parts of a request both the parser and the body readers hold: the request, its limits, the error."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


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

    __slots__ = ("body_chunks", "complete", "content_length", "continue_sent", "discard", "expect_continue",
                 "has_host", "headers", "keep_alive", "method", "received", "transfer_encoding", "url", "version")

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
        self.content_length = b""  # the field's value, for finding where a body ends when llhttp does not
        self.received = 0  # body bytes llhttp has handed over
        self.transfer_encoding: bytes | None = None  # every Transfer-Encoding field line, joined with ","
