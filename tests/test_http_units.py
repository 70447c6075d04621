"""The HTTP layer's pure parts, without a server: parser limits, environ, proxies, wsgi.input, access log."""

from __future__ import annotations

from typing import Any

import pytest

from prefork.settings import Settings
from prefork.values import trusted_networks

httptools = pytest.importorskip("httptools")

from prefork.http.accesslog import Atoms  # noqa: E402 - after the skip: needs httptools
from prefork.http.body import Body  # noqa: E402
from prefork.http.environ import (  # noqa: E402
    HTTPConfig,
    client_of,
    connection_environ,
    request_environ,
)
from prefork.http.parser import HTTPError, Limits, Request, RequestReader  # noqa: E402
from prefork.http.response import Exchange, FileWrapper  # noqa: E402

CONFIG = HTTPConfig.from_settings(Settings(app="m:a", wsgi=True))


def parse(data: bytes, limits: Limits = CONFIG.limits) -> RequestReader:
    reader = RequestReader(limits)
    reader.feed(data)
    return reader


def test_pipelined_requests_are_queued_in_order() -> None:
    reader = parse(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /c HT")
    assert [(r.method, r.url, r.version) for r in reader.queue] == [("GET", b"/a", "1.1"), ("POST", b"/b", "1.1")]
    assert list(reader.queue[1].body_chunks) == [b"hi"] and reader.queue[1].complete
    assert reader.partial and reader.error is None  # /c is on its way


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 4 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * 60 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
])
def test_limits_and_smuggling(data: bytes, status: int) -> None:
    reader = parse(data, Limits(line=100, fields=3, field_size=50))
    assert isinstance(reader.error, HTTPError) and reader.error.status == status and not reader.queue


def test_zero_limits_mean_none() -> None:
    data = b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 10_000 + b"\r\n\r\n"
    reader = parse(data, Limits(0, 0, 0))
    assert reader.error is None and len(reader.queue) == 1


def environ_for(data: bytes, addr: Any = ("10.9.8.7", 5000), trusted: bool = False) -> dict[str, Any]:
    request = parse(data).queue[0]
    base = connection_environ(CONFIG, addr, False, FileWrapper)
    return request_environ(base, request, CONFIG.trusted if trusted else None, lambda: ("0.0.0.0", "80"))


def test_environ_from_an_absolute_form_request_without_host() -> None:
    env = environ_for(b"GET http://example.com/a%2Fb?x=%41 HTTP/1.0\r\nContent-Type: text/plain\r\n\r\n")
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/a/b", "x=%41")
    assert (env["SERVER_NAME"], env["SERVER_PORT"], env["CONTENT_TYPE"]) == ("0.0.0.0", "80", "text/plain")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.9.8.7", "5000")


def test_ipv6_host_header() -> None:
    assert environ_for(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")["SERVER_NAME"] == "[::1]"
    assert environ_for(b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n")["SERVER_PORT"] == "80"


def test_forwarded_for_is_read_from_the_right() -> None:
    trusted = CONFIG.trusted  # 127.0.0.1 only
    assert client_of(["1.1.1.1", "2.2.2.2", "127.0.0.1"], trusted) == "2.2.2.2"
    assert client_of(["127.0.0.1"], trusted) == "127.0.0.1"


def test_forwarded_allow_ips_star() -> None:
    assert len(trusted_networks("*")) == 2 and len(trusted_networks(["*"])) == 2


class Source:
    """Hands the body over in pieces, as receiving would."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def more_body(self, request: Request) -> None:
        request.body_chunks.append(self.pieces.pop(0))
        request.complete = not self.pieces


def test_body_read_and_readline_across_pieces() -> None:
    request = Request()
    body = Body(request, Source([b"ab", b"c\nde", b"f\n", b"gh"]))
    assert body.readline() == b"abc\n"
    assert body.read(2) == b"de"
    assert body.readline(1) == b"f" and body.readline() == b"\n"
    assert list(body) == [b"gh"] and body.read() == b""


def test_access_log_atoms() -> None:
    env = environ_for(b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nX-Id: 7\r\n\r\n")

    class Conn:  # Exchange reads nothing from it until it sends
        pass

    exchange = Exchange(Conn(), parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").queue[0])  # type: ignore[arg-type]
    exchange.status, exchange.headers, exchange.sent = "404 Not Found", [("X-Out", "o")], 0
    line = '%(h)s %(r)s %(s)s %(b)s %(a)s %({x-id}i)s %({X-Out}o)s %(U)s %(q)s'
    assert line % Atoms(env, exchange, 0.0, 0.5) == "10.9.8.7 GET /p?q=1 HTTP/1.1 404 - ua 7 o /p q=1"


PIPELINE = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\r\n"
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2; x = y\r\nhi\r\n0\r\nT: 1\r\n\r\n"
            b"POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n!\r\n0\r\n\r\n"
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
            b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
PIPELINED = [(b"/a", b""), (b"/b", b"abc"), (b"/c", b"hi"), (b"/d", b"!"), (b"/e", b"ok"), (b"/f", b"")]


def read_in_pieces(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    reader = RequestReader(CONFIG.limits)
    for piece in pieces:
        reader.feed(piece)
    assert reader.error is None and all(request.complete for request in reader.queue)
    return [(request.url, b"".join(request.body_chunks)) for request in reader.queue]


def test_chunked_bodies_read_by_prefork_are_found_however_the_bytes_arrive() -> None:
    """Where a chunked body starts is found by walking the heads llhttp completed in the same read."""
    assert read_in_pieces([PIPELINE]) == PIPELINED
    for cut in range(1, len(PIPELINE)):
        assert read_in_pieces([PIPELINE[:cut], PIPELINE[cut:]]) == PIPELINED, cut
    head, body = PIPELINE.split(b"chunked\r\n\r\n", 1)  # the empty line ending /c's head, a byte at a time
    pieces = [head + b"chunked", b"\r", b"\n", b"\r", b"\n" + body]
    assert read_in_pieces(pieces) == PIPELINED
    for size in (1, 2, 3, 5):
        assert read_in_pieces([PIPELINE[i:i + size] for i in range(0, len(PIPELINE), size)]) == PIPELINED, size
