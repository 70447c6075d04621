"""The README's HTTP message rules, proven with raw bytes against the real ``prefork run --wsgi``.

``tests/http_corpus/`` holds one raw request stream per case (``NAME.http``, the exact bytes, CRLF and
all) and ``cases.json``: the rule of the README's table it checks, the statuses the client must get
back in order (no more: a refused request ends the connection, so what follows it in the file is never
answered), and for each request the application answered, what it must have seen (a subset of the
JSON ``wsgiapps:record`` returns). Every stream ends in a way that closes the connection.

The tests after the corpus cover what a byte stream alone cannot: 100-continue, the close of an
HTTP/1.0 close-delimited answer, and trailers or bodies arriving in reads of their own.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Server
from http_helpers import connect, parse_responses, read_response, read_until_closed, start_http

pytest.importorskip("httptools")

CORPUS = Path(__file__).resolve().parent / "http_corpus"
CASES: dict[str, dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text())
RULES = {"request-line", "version", "empty-lines", "line-endings", "target", "field-name", "field-value",
         "repeated-fields", "underscore", "host", "content-length", "cl-and-te", "transfer-coding", "chunked",
         "chunk-ext", "trailers", "no-body", "keep-alive", "pipelining", "upgrade", "limits", "expect"}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("http-rules"))
    start_http(server, "--keepalive", "5", app="wsgiapps:record", workers=1)
    yield server
    server.stop()


def converse(server: Server, payload: bytes) -> tuple[bytes, list[tuple[int, dict[str, str], bytes]]]:
    with connect(server.address) as sock:
        sock.sendall(payload)
        data = read_until_closed(sock)
    return data, parse_responses(data, ["GET"] * 100)


def test_every_rule_has_corpus_cases() -> None:
    assert {case["rule"] for case in CASES.values()} == RULES
    assert {path.stem for path in CORPUS.glob("*.http")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus(web: Server, name: str) -> None:
    case = CASES[name]
    payload = (CORPUS / f"{name}.http").read_bytes()
    data, answers = converse(web, payload)
    assert [status for status, _headers, _body in answers] == case["answers"], (payload, data)
    assert answers[-1][1].get("connection") == "close", data  # the server says it closes
    if case["rule"] == "expect":
        assert b"100 Continue" not in data, data  # http.client skips interim answers: look at the bytes
    seen = [json.loads(body) for status, _headers, body in answers if status == 200]
    for expected, got in zip(case.get("seen", []), seen, strict=True):
        assert {key: got[key] for key in expected} == expected, (payload, got)


def test_refused_answers_say_close(web: Server) -> None:
    _data, answers = converse(web, (CORPUS / "host_twice.http").read_bytes())
    assert answers[0][1]["connection"] == "close"


def test_http10_close_delimited_answer_says_close(web: Server) -> None:
    data, answers = converse(web, b"GET /stream HTTP/1.0\r\n\r\n")
    assert answers[0][0] == 200 and "content-length" not in answers[0][1], data
    assert answers[0][1]["connection"] == "close", data


def test_expect_continue_with_trailing_whitespace_gets_100(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue \r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        assert json.loads(read_response(sock).read())["body"] == "hello"


def test_trailers_in_a_read_of_their_own_are_dropped(web: Server) -> None:
    with connect(web.address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        sock.sendall(b"0\r\nX-User: admin\r\n\r\n")
        seen = json.loads(read_response(sock).read())
    assert seen["body"] == "hello" and "HTTP_X_USER" not in seen["fields"]


def test_upgrade_body_in_a_later_read_reaches_the_app(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                     b"Content-Length: 7\r\n\r\nabc")
        sock.sendall(b"defg")
        answers = parse_responses(read_until_closed(sock))
    assert json.loads(answers[0][2])["body"] == "abcdefg"
    assert answers[0][1]["connection"] == "close"
