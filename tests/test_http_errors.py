"""Bad input and failing applications under --wsgi: the right status, and the worker lives on.

One worker serves the whole module, so "the same pid answers afterwards" proves
that nothing here killed or replaced it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from conftest import Server, wait_for
from http_helpers import assert_validator_clean, connect, get, parse_responses, read_until_closed, start_http

pytest.importorskip("httptools")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("http-errors"))
    start_http(server, workers=1)
    yield server
    server.stop()


@pytest.fixture
def pid(web: Server) -> Iterator[int]:
    """The worker's pid before the test; after it, the same worker must still answer."""
    before = int(get(web.address, "/")[2])
    yield before
    assert int(get(web.address, "/")[2]) == before


def exchange(server: Server, payload: bytes) -> tuple[bytes, list[tuple[int, dict[str, str], bytes]]]:
    """Send ``payload`` on a fresh connection; everything the server answers before closing, parsed."""
    with connect(server.address) as sock:
        sock.sendall(payload)
        data = read_until_closed(sock)
    return data, parse_responses(data)


def status_of(server: Server, payload: bytes) -> int:
    data, answers = exchange(server, payload)
    assert len(answers) == 1, data
    assert answers[0][1]["connection"] == "close"
    return answers[0][0]


def test_request_line_too_long_is_414(web: Server, pid: int) -> None:
    assert status_of(web, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n") == 414


def test_request_line_just_over_the_limit_is_414(web: Server, pid: int) -> None:
    path = b"/" + b"a" * (4094 - len(b"GET  HTTP/1.1"))  # one byte over 4094 with the method and version
    assert status_of(web, b"GET " + path + b"x HTTP/1.1\r\nHost: x\r\n\r\n") == 414
    _data, answers = exchange(web, b"GET " + path[:-1] + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answers[0][0] == 200


def test_too_many_header_fields_is_431(web: Server, pid: int) -> None:
    fields = b"".join(b"X-%d: y\r\n" % n for n in range(101))
    assert status_of(web, b"GET / HTTP/1.1\r\n" + fields + b"\r\n") == 431


def test_header_field_too_large_is_431(web: Server, pid: int) -> None:
    assert status_of(web, b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n") == 431


def test_endless_header_is_refused_before_it_ends(web: Server, pid: int) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: ")
        try:
            for _ in range(100):  # never ends the field: the limit must stop it, not the end of line
                sock.sendall(b"v" * 10_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("payload", [
    b"HELLO\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello to the plain port
], ids=["garbage", "no-colon", "no-host", "negative-length", "tls"])
def test_malformed_request_is_400(web: Server, pid: int, payload: bytes) -> None:
    assert status_of(web, payload) == 400


def test_other_major_version_is_505(web: Server, pid: int) -> None:
    assert status_of(web, b"GET / HTTP/9.9\r\nHost: x\r\n\r\n") == 505


def test_content_length_with_transfer_encoding_is_400_and_closed(web: Server, pid: int) -> None:
    data, answers = exchange(web, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n")
    assert [a[0] for a in answers] == [400] and b"smuggled" not in data


def test_conflicting_content_lengths_are_400_and_closed(web: Server, pid: int) -> None:
    assert status_of(web, b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab") == 400


def test_bad_request_after_a_good_one_in_a_pipeline(web: Server, pid: int) -> None:
    _data, answers = exchange(web, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBAD REQUEST\r\n\r\n")
    assert [a[0] for a in answers] == [200, 400]


def test_malformed_chunked_body_is_400(web: Server, pid: int) -> None:
    assert status_of(web, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"zz\r\nhello\r\n0\r\n\r\n") == 400


def test_application_error_before_start_is_500_with_traceback(web: Server, pid: int) -> None:
    assert status_of(web, b"GET /fail-before HTTP/1.1\r\nHost: x\r\n\r\n") == 500
    wait_for(lambda: "failing before start_response, on purpose" in web.log(), 10)
    assert "Traceback" in web.log()


def test_application_error_after_start_closes_the_connection(web: Server, pid: int) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"GET /fail-after HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK") and b"the beginning" in data
    assert not data.endswith(b"0\r\n\r\n")  # no last chunk: the client knows the answer is cut short
    wait_for(lambda: "failing in the middle of the body, on purpose" in web.log(), 10)


def test_client_leaving_in_the_middle_of_its_body(web: Server, pid: int) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly this")


def test_client_resetting_in_the_middle_of_its_head(web: Server, pid: int) -> None:
    sock = connect(web.address)
    sock.sendall(b"GET / HTTP/1.1\r\nHost:")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST


def test_upgrade_request_is_answered_then_closed(web: Server, pid: int) -> None:
    _data, answers = exchange(web, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                                  b"\x81\x85not http")
    assert [a[0] for a in answers] == [200]


def test_validator_stayed_quiet(web: Server) -> None:
    assert_validator_clean(web)


def test_stalled_head_is_closed_and_the_worker_goes_on(web: Server, pid: int) -> None:
    """Slowloris: a head begun and never finished is dropped after 10 s, well before --timeout (30 s)."""
    with connect(web.address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        assert read_until_closed(sock, 40) == b""
        assert time.monotonic() - started < 29
