"""``wsgi.input``: exactly the request body, read from the socket as the application asks.

Bytes the parser has already taken from the socket wait in the request's
chunks; when those run out, the connection receives more (sending ``100
Continue`` first when the client asked for it). End of body is end of file,
whatever the framing (Content-Length or chunked); ``wsgi.input_terminated``
tells the application it may read to the end without a Content-Length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from .parser import Request


class BodyError(OSError):
    """The body could not be read whole: the client went away or sent a malformed body."""


class BodySource(Protocol):
    def more_body(self, request: Request) -> None:
        """Receive more of ``request``'s body into its chunks; raise :class:`BodyError` if none can come."""


class Body:
    """The file-like ``wsgi.input`` of one request."""

    def __init__(self, request: Request, source: BodySource) -> None:
        self.request = request
        self.source = source
        self.buffer = b""  # read from the chunks but not yet returned (readline's remainder)

    def next_chunk(self) -> bytes:
        """The next piece of body; b"" at its end."""
        if self.buffer:
            data, self.buffer = self.buffer, b""
            return data
        chunks = self.request.body_chunks
        while not chunks:
            if self.request.complete:
                return b""
            self.source.more_body(self.request)
        return chunks.popleft()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.next_chunk():
                parts.append(chunk)
            return b"".join(parts)
        data = bytearray()
        while len(data) < size:
            chunk = self.next_chunk()
            if not chunk:
                break
            data += chunk
        if len(data) > size:
            self.buffer = bytes(data[size:])
            del data[size:]
        return bytes(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        data = bytearray()
        while limit is None or len(data) < limit:
            chunk = self.next_chunk()
            if not chunk:
                break
            end = chunk.find(b"\n") + 1 or len(chunk)
            if limit is not None:
                end = min(end, limit - len(data))
            data += chunk[:end]
            if end < len(chunk):
                self.buffer = chunk[end:]
            if data.endswith(b"\n"):
                break
        return bytes(data)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line
