"""HTTP/1.1 with --wsgi, end to end: real prefork workers, real clients (http.client, curl, raw sockets)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, wait_for
from http_helpers import (
    assert_validator_clean,
    closed_by_server,
    connect,
    get,
    parse_responses,
    read_response,
    read_until_closed,
    start_http,
)
from wsgiapps import FILE_SIZE

pytest.importorskip("httptools")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: two workers, an access log."""
    tmp = tmp_path_factory.mktemp("http")
    server = Server(tmp)
    start_http(server, "--access-log", str(tmp / "access.log"))
    yield server
    server.stop()
    assert_validator_clean(server)


def test_get_environ(web: Server) -> None:
    status, headers, body = get(web.address, "/environ?a=1&b=%20", headers={"Cookie": "x=1"})
    assert status == 200 and headers["content-type"] == "application/json"
    assert "date" in headers and headers["server"] == "prefork"
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "GET" and env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20" and env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == str(web.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"] is True and env["HTTP_COOKIE"] == "x=1"


def test_percent_decoded_path_and_repeated_headers(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"GET /envir%6Fn HTTP/1.1\r\nHost: h:81\r\nX-Multi: a\r\nX-Multi: b\r\n"
                     b"X_Multi: spoof\r\nConnection: close\r\n\r\n")
        [(status, _, body)] = parse_responses(read_until_closed(sock))
    env = json.loads(body)
    assert status == 200 and env["PATH_INFO"] == "/environ" and env["RAW_URI"] == "/envir%6Fn"
    assert env["HTTP_X_MULTI"] == "a,b"  # the underscore spelling is dropped, not merged
    assert env["SERVER_NAME"] == "h" and env["SERVER_PORT"] == "81"


def test_keep_alive_serves_many_requests_on_one_connection(web: Server) -> None:
    conn = http.client.HTTPConnection(*web.address, timeout=10)
    conn.connect()
    first = conn.sock  # http.client reconnects silently: the same socket throughout proves reuse
    pids = set()
    for _ in range(5):
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.getheader("Connection") is None  # HTTP/1.1: persistent by default
        pids.add(int(response.read()))
        assert conn.sock is first
    conn.close()
    assert len(pids) == 1


def test_pipelined_requests_answered_in_order(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"GET /environ?one HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                     b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /environ?four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = parse_responses(read_until_closed(sock), ["GET", "POST", "HEAD", "GET"])
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert json.loads(answers[0][2])["QUERY_STRING"] == "one"
    assert answers[1][2] == b"hello"
    assert answers[2][2] == b"" and int(answers[2][1]["content-length"]) > 0
    assert json.loads(answers[3][2])["QUERY_STRING"] == "four" and answers[3][1]["connection"] == "close"


def test_chunked_request_body(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n"
                     b"POST /lines HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"4\r\na\nbc\r\n3\r\n\nd\n\r\n0\r\n\r\n")
        answers = parse_responses(read_until_closed(sock), ["POST", "POST"])
    assert answers[0][2] == b"hello, world"
    assert json.loads(answers[1][2]) == ["a\n", "bc\n", "d\n"]


def test_expect_100_continue(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # asked for only once the app reads
        sock.sendall(b"body")
        response = read_response(sock, "POST")
        assert response.status == 200 and response.read() == b"body"
        assert response.getheader("Connection") is None


def test_expect_100_continue_not_read_closes(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"POST /ignore-body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        data = read_until_closed(sock)
    assert b"100 Continue" not in data
    [(status, headers, _)] = parse_responses(data, ["POST"])
    assert status == 200 and headers["connection"] == "close"  # would the body come or not? close


def test_unread_body_is_drained_before_the_next_request(web: Server) -> None:
    body = b"z" * 100_000
    with connect(web.address) as sock:
        sock.sendall(b"POST /ignore-body HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                     + b"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = parse_responses(read_until_closed(sock), ["POST", "GET"])
    assert [a[0] for a in answers] == [200, 200] and json.loads(answers[1][2])["PATH_INFO"] == "/environ"


def test_head_has_headers_but_no_body(web: Server) -> None:
    conn = http.client.HTTPConnection(*web.address, timeout=10)
    conn.request("HEAD", "/environ")
    response = conn.getresponse()
    assert response.status == 200 and int(response.getheader("Content-Length") or 0) > 0
    assert response.read() == b""
    conn.request("GET", "/environ")  # had a body slipped out, this answer would be garbage
    assert json.loads(conn.getresponse().read())["REQUEST_METHOD"] == "GET"
    conn.close()


def test_streamed_answer_is_chunked_for_http11(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(sock)
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read() == b"".join(f"part {n}\n".encode() for n in range(5))
        sock.sendall(b"GET /write HTTP/1.1\r\nHost: x\r\n\r\n")  # still open after the last chunk
        assert read_response(sock).read() == b"written, then returned\n"


def test_streamed_answer_to_http10_ends_with_the_connection(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        data = read_until_closed(sock)
    assert b"chunked" not in data.lower() and data.endswith(b"part 4\n")


def test_http10_keep_alive(web: Server) -> None:
    with connect(web.address) as sock:
        sock.sendall(b"GET /environ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = read_response(sock)
        assert first.getheader("Connection") == "keep-alive"
        assert json.loads(first.read())["SERVER_PROTOCOL"] == "HTTP/1.0"
        sock.sendall(b"GET /environ HTTP/1.0\r\n\r\n")  # no keep-alive asked: the server closes
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" not in data


def test_exc_info_replaces_the_status(web: Server) -> None:
    status, _, body = get(web.address, "/exc-info")
    assert (status, body) == (503, b"sorry\n")


def test_no_content(web: Server) -> None:
    status, headers, body = get(web.address, "/no-content")
    assert (status, body) == (204, b"") and "content-length" not in headers


def test_file_wrapper_through_the_validator(web: Server) -> None:
    status, _headers, body = get(web.address, "/file")
    assert status == 200 and len(body) == FILE_SIZE and body[:256] == bytes(range(256))


def test_file_wrapper_with_sendfile(server: Server) -> None:
    start_http(server, app="wsgiapps:raw", workers=1)
    status, headers, body = get(server.address, "/file")
    assert status == 200 and headers["content-length"] == str(FILE_SIZE)  # known from the file itself
    assert len(body) == FILE_SIZE and body[:256] == bytes(range(256))
    status, headers, body = get(server.address, "/file", method="HEAD")
    assert status == 200 and headers["content-length"] == str(FILE_SIZE) and body == b""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(web: Server, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{web.port}"
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(200_000))
    out = subprocess.run(["curl", "-sS", "--fail", f"{base}/echo", "--data-binary", f"@{upload}",
                          "-H", "Expect: 100-continue", "-o", str(tmp_path / "back")], timeout=30)
    assert out.returncode == 0 and (tmp_path / "back").read_bytes() == upload.read_bytes()
    chunked = subprocess.run(["curl", "-sS", "--fail", f"{base}/echo", "-H", "Transfer-Encoding: chunked",
                              "--data-binary", "@-"], input=b"sent in chunks", capture_output=True, timeout=30)
    assert chunked.stdout == b"sent in chunks"
    two = subprocess.run(["curl", "-sS", "--fail", f"{base}/", f"{base}/", "-w", "%{num_connects}\n"],
                         capture_output=True, timeout=30)
    assert two.stdout.decode().split("\n")[-2] == "0"  # the second URL reused the first's connection
    http10 = subprocess.run(["curl", "-sS", "--fail", "--http1.0", f"{base}/stream"], capture_output=True, timeout=30)
    assert http10.stdout.endswith(b"part 4\n")


def test_access_log_in_combined_format(web: Server) -> None:
    get(web.address, "/environ?q=1", headers={"Referer": "http://ref/", "User-Agent": "tester/1.0"})
    log = web.tmp_path / "access.log"
    line = wait_for(lambda: next((x for x in log.read_text().splitlines() if "tester/1.0" in x), None), 10)
    head, _, rest = line.partition(" [")
    assert head == "127.0.0.1 - -"
    assert rest.split("] ", 1)[1].startswith('"GET /environ?q=1 HTTP/1.1" 200 ')
    assert line.endswith('"http://ref/" "tester/1.0"')


# --- the keep-alive policy ---


def test_idle_keep_alive_connection_closed_after_keepalive_seconds(server: Server) -> None:
    start_http(server, "--keepalive", "1", workers=1)
    with connect(server.address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(sock).read()
        started = time.monotonic()
        assert closed_by_server(sock, 20)
        assert time.monotonic() - started >= 0.9


def test_idle_keep_alive_client_does_not_pin_the_only_worker(server: Server) -> None:
    """One worker, --keepalive 60: a second client is served at once, and the idle one stays kept."""
    start_http(server, "--keepalive", "60", workers=1)
    with connect(server.address) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        pid = int(read_response(idle).read())
        started = time.monotonic()
        status, _, body = get(server.address, "/")
        assert status == 200 and int(body) == pid
        assert time.monotonic() - started < 30  # not after --keepalive's 60 s
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, still served
        response = read_response(idle)
        assert response.status == 200 and int(response.read()) == pid
        assert response.getheader("Connection") is None


def test_answers_keep_the_connection_while_others_wait(server: Server) -> None:
    """A worker busy while a connection queues keeps its client (it waits in the worker's epoll set)."""
    start_http(server, workers=1)
    with connect(server.address) as slow:
        slow.sendall(b"GET /sleep?1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        with connect(server.address) as queued:  # waits in the accept queue while /sleep runs
            queued.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = read_response(slow)
            assert response.status == 200 and response.getheader("Connection") is None
            response.read()
            assert parse_responses(read_until_closed(queued))[0][0] == 200
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(slow).status == 200


def test_graceful_stop_does_not_wait_for_idle_keep_alive_clients(server: Server) -> None:
    start_http(server, "--keepalive", "60", workers=1)
    with connect(server.address) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(idle).read()
        time.sleep(0.2)  # the worker now waits for the client's next request
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0
        assert time.monotonic() - started < 20  # not --keepalive's 60 s
        assert closed_by_server(idle, 10)


def test_threads_share_the_handler(server: Server) -> None:
    start_http(server, "--threads", "4", workers=1)
    socks = [connect(server.address) for _ in range(4)]
    try:
        for sock in socks:  # four kept-alive connections at once, one worker
            sock.sendall(b"GET /environ HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in socks:
            assert json.loads(read_response(sock).read())["wsgi.multithread"] is True
    finally:
        for sock in socks:
            sock.close()
    assert_validator_clean(server)


def test_over_tls(server: Server, tmp_path: Path) -> None:
    """--certfile: the connection is an SSLSocket (no sendfile; bytes TLS decrypted ahead of poll())."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    start_http(server, "--certfile", str(tmp_path / "server.pem"), app="wsgiapps:raw", workers=1)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    conn = http.client.HTTPSConnection(*server.address, timeout=10, context=context)
    conn.request("GET", "/environ")
    assert json.loads(conn.getresponse().read())["wsgi.url_scheme"] == "https"
    conn.request("GET", "/file")  # the same connection: kept alive over TLS, the file sent with send()
    response = conn.getresponse()
    assert len(response.read()) == FILE_SIZE and response.getheader("Content-Length") == str(FILE_SIZE)
    conn.close()


def test_max_requests_counts_requests_on_a_kept_alive_connection(server: Server) -> None:
    start_http(server, "--max-requests", "3", workers=1)
    with connect(server.address) as sock:
        answers = []
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock)
            answers.append((response.getheader("Connection"), int(response.read())))
        assert [a[0] for a in answers] == [None, None, "close"]  # the third is the worker's last
        assert closed_by_server(sock, 10)
    first = answers[0][1]
    wait_for(lambda: first not in server.worker_pids(), 20, what="the worker to be replaced")
    assert int(get(server.address, "/")[2]) != first
