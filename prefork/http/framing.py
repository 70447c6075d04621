"""Request bodies prefork reads itself, after llhttp has parsed the head.

- Chunked bodies (RFC 9112 7.1), always: llhttp refuses the whitespace RFC 9112
  7.1.1 allows after ``;`` in a chunk extension (``5; a=b``), and httptools
  offers no leniency for it.
- The body of a request asking for Upgrade (or CONNECT): llhttp skips it, as if
  the protocol had switched; we never switch (RFC 9110 7.8), so the body is read
  as its framing says.

Each reader takes bytes as they arrive and hands the body to its request's
chunks; once the body is over it returns what followed it, for the parser.
Trailer fields are checked and dropped: they never join the header section
(RFC 9110 6.5.1).
"""

from __future__ import annotations

import re

from .message import HTTPError, Limits, Request

TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# chunk-size *( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] ), and the OWS llhttp and h11 accept before CRLF
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|"
                        + QUOTED + rb"))?)*[ \t]*")
FIELD_LINE = re.compile(TOKEN + rb":[ \t]*(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?[ \t]*")
LONGEST_CHUNK_LINE = 4096  # a size line with extensions; longer is refused


class LengthBody:
    """A Content-Length body."""

    def __init__(self, request: Request, length: int) -> None:
        self.request = request
        self.left = length

    def feed(self, data: bytes) -> bytes | None:
        """Take the body's bytes from ``data``: what follows the body once it is whole, else None."""
        take = min(self.left, len(data))
        if take and not self.request.discard:
            self.request.body_chunks.append(data[:take])
        self.left -= take
        return data[take:] if not self.left else None


class ChunkedBody:
    """A chunked body: size lines, data, the last chunk, trailer fields, the empty line."""

    def __init__(self, request: Request, limits: Limits) -> None:
        self.request = request
        self.limits = limits
        self.line = b""  # a line not yet whole
        self.left = 0  # data bytes of the current chunk still to come
        self.state = "size"  # size, data, data-end, trailer
        self.trailers = 0

    def feed(self, data: bytes) -> bytes | None:
        """Take the body's bytes from ``data``: what follows the body once it is whole, else None."""
        pos, end = 0, len(data)
        while pos < end:
            if self.state == "data":
                take = min(self.left, end - pos)
                if not self.request.discard:
                    self.request.body_chunks.append(data[pos:pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.state = "data-end"
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self.line += data[pos:]
                if len(self.line) > LONGEST_CHUNK_LINE:
                    raise HTTPError(400, "chunk line too long")
                return None
            line, self.line = self.line + data[pos:newline + 1], b""
            pos = newline + 1
            if self.take_line(line):
                return data[pos:]
        return None

    def take_line(self, line: bytes) -> bool:
        """One CRLF-terminated line; True when it was the body's last."""
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise HTTPError(400, "a chunked body line must end in CRLF")
        line = line[:-2]
        if self.state == "size":
            match = CHUNK_LINE.fullmatch(line)
            if match is None:
                raise HTTPError(400, "bad chunk size line")
            self.left = int(match.group(1), 16)
            self.state = "data" if self.left else "trailer"
        elif self.state == "data-end":
            if line:
                raise HTTPError(400, "chunk data longer than its size")
            self.state = "size"
        elif not line:
            return True
        else:
            self.check_trailer(line)
        return False

    def check_trailer(self, line: bytes) -> None:
        """A trailer field: valid syntax and within the limits, then dropped."""
        limits = self.limits
        if line[0] in (0x20, 0x09):
            raise HTTPError(400, "obs-fold in a trailer field")
        if FIELD_LINE.fullmatch(line) is None:
            raise HTTPError(400, "bad trailer field")
        self.trailers += 1
        if limits.fields and self.trailers > limits.fields:
            raise HTTPError(431, "too many trailer fields")
        if limits.field_size and len(line) > limits.field_size:
            raise HTTPError(431, "trailer field too large")
