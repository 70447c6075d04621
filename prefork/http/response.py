"""One request's exchange: run the application, frame and send what it answers.

Framing, decided when the head goes out: the application's Content-Length;
else the body's length when it is already whole (a one-item list, a file);
else chunked for HTTP/1.1; else (HTTP/1.0) the end of the connection marks
the end of the body. HEAD, 1xx, 204 and 304 answers carry no body.

Keep-alive is decided at the same moment and announced in the head, so the
client never sends a request on a connection we are about to close: the
connection is kept when the client wants it and none of these hold: the
application said ``Connection: close``; the framing needs the close; the
worker is stopping or due to retire (--max-requests), or, for a worker that
serves one connection at a time (--max-per-source), other connections wait
in its accept queue; the client still holds back a body it was told to wait
with (100-continue).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from .body import BodyError
from .parser import HTTPError, Request

if TYPE_CHECKING:
    from .handler import HTTPConnection

log = logging.getLogger("prefork")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
REASONS = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 505: "HTTP Version Not Supported"}


class FileWrapper:
    """``wsgi.file_wrapper``: a file the server may send with ``sendfile`` (else read in blocks)."""

    def __init__(self, filelike: BinaryIO, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterable[bytes]:
        while block := self.filelike.read(self.blksize):
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def date_line(cache: list[Any]) -> bytes:
    """The Date header line, formatted once a second (``cache`` is [second, line])."""
    now = int(time.time())
    if cache[0] != now:
        cache[1], cache[0] = b"Date: %s\r\n" % imf_fixdate(now).encode("ascii"), now
    line: bytes = cache[1]
    return line


SERVER_LINE = b"Server: prefork\r\n"
CHUNKED_LINE = b"Transfer-Encoding: chunked\r\n"
KEEP_ALIVE_LINE = b"Connection: keep-alive\r\n"
CLOSE_LINE = b"Connection: close\r\n"


class AppHead(NamedTuple):
    """What a status and header list give the head, found once for each distinct pair."""

    text: bytes  # the status line and the application's fields but Connection, each ending in CRLF
    code: int  # the status code
    length: int | None  # its Content-Length
    wants_close: bool  # its Connection field says close
    has_date: bool
    server: bytes  # our Server line, unless the application sent one


class AppHeads:
    """The :class:`AppHead` of each (status, headers) an application answers with: most answer with few."""

    LIMIT = 256  # distinct pairs kept; past it, start over (an app that varies its headers gains nothing)

    def __init__(self) -> None:
        self.known: dict[Any, AppHead] = {}

    def get(self, status: str | None, headers: list[tuple[str, str]]) -> AppHead:
        try:
            key = (status, tuple(headers))
            part = self.known.get(key)
        except TypeError:  # an unhashable item (a list for a tuple): parse it every time
            return app_head(status, headers)
        if part is None:
            part = app_head(status, headers)
            if len(self.known) >= self.LIMIT:
                self.known.clear()
            self.known[key] = part
        return part


def app_head(status: str | None, headers: list[tuple[str, str]]) -> AppHead:
    """Parse the application's status and fields (ValueError: a line break in one, or a bad Content-Length)."""
    lines = [f"HTTP/1.1 {status}"]
    length = None
    wants_close = has_date = has_server = False
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length":
            length = int(value)
        elif lower == "connection":
            wants_close = "close" in value.lower()
            continue  # ours, in the head
        elif lower == "date":
            has_date = True
        elif lower == "server":
            has_server = True
        lines.append(f"{name}: {value}")
    text = "\r\n".join(lines)
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        raise ValueError("a response header contains a line break")
    code = int(status[:3]) if status else 0
    return AppHead((text + "\r\n").encode("latin-1"), code, length, wants_close, has_date,
                   b"" if has_server else SERVER_LINE)


DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imf_fixdate(now: float) -> str:
    """RFC 9110's date format, as email.utils.formatdate(now, usegmt=True) writes it (without
    importing the email package into every worker): names in English whatever the locale."""
    t = time.gmtime(now)
    return (f"{DAYS[t.tm_wday]}, {t.tm_mday:02d} {MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def error_response(status: int, message: str) -> bytes:
    """A complete answer that ends the connection."""
    body = f"{status} {REASONS[status]}: {message}\n".encode("latin-1", "replace")
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class Exchange:
    """The application's answer to one request: ``start_response``, ``write`` and the result."""

    __slots__ = ("chunked", "conn", "head_sent", "headers", "keep_alive", "length", "no_body", "request", "sent",
                 "status")

    def __init__(self, conn: HTTPConnection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.no_body = request.method == "HEAD"
        self.length: int | None = None  # the Content-Length sent
        self.chunked = False
        self.sent = 0  # body bytes sent
        self.keep_alive = False

    @property
    def code(self) -> int:
        return int(self.status[:3]) if self.status else 0

    # --- the application's side ---

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        self.status, self.headers = status, headers
        return self.write

    def write(self, data: bytes) -> None:
        if not self.head_sent:
            self.send_head(data, None)
        else:
            self.send_body(data)

    # --- running it ---

    def run(self, app: Any, environ: dict[str, Any]) -> bool:
        """Run the application; True when the connection may serve another request."""
        try:
            result = app(environ, self.start_response)
            try:
                self.send_result(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except ConnectionError:
            return False  # the client went away: nobody to answer
        except Exception as exc:
            return self.failed(exc)
        return self.keep_alive

    def send_result(self, result: Iterable[bytes]) -> None:
        if isinstance(result, FileWrapper) and self.send_file(result):
            return
        if isinstance(result, list) and len(result) == 1 and not self.head_sent:
            self.send_head(result[0], len(result[0]))  # the common case: head and body in one send
        else:
            for data in result:
                self.write(data)
        self.finish()

    def finish(self) -> None:
        if not self.head_sent:
            self.send_head(b"", 0)
        elif self.chunked:
            self.conn.send(b"0\r\n\r\n")
        if self.length is not None and self.sent < self.length and not self.no_body:
            log.warning("application sent %d of the %d bytes its Content-Length announced; connection closed",
                        self.sent, self.length)
            self.keep_alive = False  # the client would wait for the rest

    def failed(self, exc: Exception) -> bool:
        """The application (or the request body) failed: answer if we still can, and close."""
        request = self.request
        error = self.conn.reader.error
        if self.head_sent:
            log.error("error in application after its response started (%s %s); connection closed",
                      request.method, request.url.decode("latin-1"), exc_info=exc)
            return False
        if isinstance(exc, BodyError) and error is None:
            return False  # the client left in the middle of its body
        if error is None:
            log.error("error in application (%s %s)", request.method, request.url.decode("latin-1"), exc_info=exc)
            error = HTTPError(500, "the application failed")
        self.status = f"{error.status} {REASONS[error.status]}"
        self.conn.send_error(error)
        return False

    def send_file(self, wrapper: FileWrapper) -> bool:
        """Send a regular file with ``socket.sendfile`` (os.sendfile, or send over TLS); False: iterate it."""
        file = wrapper.filelike
        try:
            fd = file.fileno()
            info = os.fstat(fd)
            offset = file.tell()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        count = max(0, info.st_size - offset)
        self.send_head(b"", count)
        count = min(count, self.length if self.length is not None else count)
        if count and not self.no_body:
            self.conn.sock.sendfile(file, offset, count)
            self.sent += count
        self.finish()
        return True

    # --- the wire ---

    def send_head(self, body: bytes, whole: int | None) -> None:
        """The status line and headers, with ``body`` in the same send; ``whole``: the body's length if known."""
        if self.status is None:
            raise AssertionError("the application wrote before calling start_response")
        head = self.head(whole)
        self.head_sent = True
        if body and not self.no_body:
            self.conn.send(head + self.framed(body))
        else:
            self.conn.send(head)

    def head(self, whole: int | None) -> bytes:
        """Build the head: the application's headers (parsed once per distinct list), framing, Date, Server,
        Connection."""
        request = self.request
        part = self.conn.handler.heads.get(self.status, self.headers)
        self.length = part.length
        code = part.code
        framing = b""
        ends_with_close = False
        if code < 200 or code in (204, 304):
            self.no_body = True
        elif self.length is None:
            if whole is not None:
                self.length = whole
                framing = b"Content-Length: %d\r\n" % whole
            elif self.no_body:
                pass  # HEAD of a streamed answer: no length to tell
            elif request.version == "1.1":
                self.chunked = True
                framing = CHUNKED_LINE
            else:
                ends_with_close = True
        date = b"" if part.has_date else date_line(self.conn.handler.date_cache)
        self.keep_alive = self.may_keep_alive(part.wants_close or ends_with_close)
        # Closing: said in HTTP/1.0 too (a close-delimited body says so, RFC 9112 9.6); keeping: only there.
        connection = KEEP_ALIVE_LINE if request.version == "1.0" else b""
        if not self.keep_alive:
            connection = CLOSE_LINE
        return b"".join((part.text, framing, date, part.server, connection, b"\r\n"))

    def may_keep_alive(self, must_close: bool) -> bool:
        request = self.request
        if must_close or not request.keep_alive or not self.conn.handler.config.keepalive:
            return False
        if request.expect_continue and not request.continue_sent and not request.complete:
            return False  # the client may send the body we did not ask for, or may not
        if self.conn.reader.upgraded:
            return False  # what follows the request is another protocol's
        return not self.conn.host.should_release()

    def framed(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire: cut at Content-Length, or as one chunk; counted."""
        if self.length is not None:
            data = data[: max(0, self.length - self.sent)]
        self.sent += len(data)
        if self.chunked and data:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def send_body(self, data: bytes) -> None:
        if data and not self.no_body:
            framed = self.framed(data)
            if framed:
                self.conn.send(framed)
