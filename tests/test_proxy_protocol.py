"""PROXY protocol v1/v2: the pure parser, a fuzz of the socket reader, the real server, a real HAProxy."""

from __future__ import annotations

import ast
import contextlib
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Server, free_port, request, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork.proxy_protocol import (
    V2_SIGNATURE,
    NoHeader,
    ProxyHeader,
    ProxyProtocolError,
    parse_v1,
    parse_v2,
    read_header,
)


def v2(command: int = 1, family: int = 0x11, body: bytes | None = None) -> bytes:
    """A v2 header; by default PROXY, TCP over IPv4, from 10.1.2.3:5555 to 10.0.0.1:80."""
    if body is None:
        body = socket.inet_aton("10.1.2.3") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 5555, 80)
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v2_tcp6(source: str, port: int, tlvs: bytes = b"") -> bytes:
    body = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, "::1")
    return v2(family=0x21, body=body + struct.pack("!HH", port, 443) + tlvs)


# --- the pure parser ---


@pytest.mark.parametrize(("line", "client"), [
    (b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n", ("10.1.2.3", 5555)),
    (b"PROXY TCP6 2001:db8::7 ::1 65535 443\r\n", ("2001:db8::7", 65535, 0, 0)),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 0 0\r\n", ("1.2.3.4", 0)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
])
def test_v1_good(line: bytes, client: object) -> None:
    assert parse_v1(line) == ProxyHeader(1, client)  # type: ignore[arg-type]


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\n",  # LF only
    b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80 \r\n",  # trailing space
    b"PROXY TCP4 10.1.2.3  10.0.0.1 5555 80\r\n",  # double space
    b"PROXY TCP6 10.1.2.3 10.0.0.1 5555 80\r\n",  # family mismatch
    b"PROXY TCP4 ::1 ::1 5555 80\r\n",
    b"PROXY TCP4 10.1.2.3 10.0.0.1 65536 80\r\n",
    b"PROXY TCP4 10.1.2.3 10.0.0.1 0555 80\r\n",  # leading zero
    b"PROXY TCP4 10.1.2.3 10.0.0.1 +555 80\r\n",
    b"PROXY TCP4 010.1.2.3 10.0.0.1 555 80\r\n",
    b"PROXY UDP4 10.1.2.3 10.0.0.1 5555 80\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 5555 80\r\n",
    b"proxy TCP4 10.1.2.3 10.0.0.1 5555 80\r\n",
    b"PROXY TCP4 10.1.2.3 10.0.0.1 5555\r\n",
    b"PROXY TCP4 10.1.2.3 10.0.0.1 \xd9\xa1 80\r\n",  # an Arabic-Indic digit
    b"PROXY " + b"A" * 120 + b"\r\n",
])
def test_v1_bad(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_v1(line)


def test_v2_good() -> None:
    assert parse_v2(v2()) == ProxyHeader(2, ("10.1.2.3", 5555))
    assert parse_v2(v2_tcp6("2001:db8::9", 4444)) == ProxyHeader(2, ("2001:db8::9", 4444, 0, 0))
    tlv = b"\x05\x00\x03abc"  # a unique-id TLV after the addresses is skipped
    assert parse_v2(v2_tcp6("2001:db8::9", 4444, tlv)).client == ("2001:db8::9", 4444, 0, 0)
    assert parse_v2(v2(command=0, family=0, body=b"")) == ProxyHeader(2, None)  # LOCAL: health check
    assert parse_v2(v2(family=0x31, body=b"\x00" * 216)) == ProxyHeader(2, None)  # unix: the real peer


@pytest.mark.parametrize("header", [
    v2()[:-1],  # truncated
    v2(family=0x11, body=b"\x00" * 11),  # too short for IPv4 addresses
    v2(command=2),
    v2(family=0x41),
    bytes([0x10 | 1]).join([V2_SIGNATURE, v2()[13:]]),  # version 1 in a v2 header
    b"\r\n\r\n\x00\r\nQUIT\r" + v2()[12:],
])
def test_v2_bad(header: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_v2(header)


# --- the reader, on real sockets: exact, bounded, and never anything but a ProxyProtocolError ---


@contextlib.contextmanager
def feed(data: bytes) -> Iterator[socket.socket]:
    """The server end of a socket pair whose client sent ``data``, then half-closed."""
    server, client = socket.socketpair()
    with server, client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        yield server


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n", b"PROXY UNKNOWN\r\n", v2(), v2_tcp6("::2", 1, b"\x00" * 300),
])
def test_reader_leaves_what_follows_the_header(header: bytes) -> None:
    with feed(header + b"GET / HTTP/1.0\r\n\r\n") as sock:
        read_header(sock, time.monotonic() + 5)
        sock.settimeout(5)
        assert sock.recv(100) == b"GET / HTTP/1.0\r\n\r\n"


def test_reader_reassembles_a_header_sent_byte_by_byte() -> None:
    server, client = socket.socketpair()
    header = b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n"
    for byte in header:
        client.sendall(bytes([byte]))
    client.sendall(b"rest")
    assert read_header(server, time.monotonic() + 5).client == ("10.1.2.3", 5555)
    assert server.recv(100) == b"rest"


def test_reader_tells_a_probe_from_a_truncated_header() -> None:
    with feed(b"") as sock, pytest.raises(NoHeader):
        read_header(sock, time.monotonic() + 5)
    for data in (b"PROXY TCP4 10.1.2.3", b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r", v2()[:20]):
        with feed(data) as sock, pytest.raises(ProxyProtocolError, match="closed inside") as caught:
            read_header(sock, time.monotonic() + 5)
        assert not isinstance(caught.value, NoHeader)


def test_reader_deadline_bounds_a_trickle() -> None:
    server, client = socket.socketpair()
    client.sendall(b"PROXY TCP4 ")
    with pytest.raises(ProxyProtocolError, match="timeout"):
        read_header(server, time.monotonic() + 0.3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=120).map(lambda b: b"PROXY " + b),
    st.binary(max_size=120).map(lambda b: V2_SIGNATURE + b),
    st.tuples(st.sampled_from([b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n", v2(), v2_tcp6("::1", 7)]),
              st.integers(0, 60), st.binary(max_size=8))
      .map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:]),  # a valid header with bytes spliced in
))
def test_fuzz_reader_never_crashes_nor_hangs(data: bytes) -> None:
    with feed(data) as sock:
        try:
            header = read_header(sock, time.monotonic() + 30)
        except ProxyProtocolError as exc:
            # Everything was sent, then EOF: the reader decides on what it has, never waits it out.
            assert "timeout" not in str(exc)
        else:
            assert header.version in (1, 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_parsers_raise_only_their_error(data: bytes) -> None:
    for parse in (parse_v1, parse_v2):
        try:
            parse(data)
        except ProxyProtocolError:
            pass


# --- the real server ---


def ask(server: Server, payload: bytes, source: str = "127.0.0.1") -> bytes:
    """Send ``payload`` from ``source``; the answer, or b"" when the server closed (or reset)."""
    with socket.socket() as sock:
        sock.settimeout(20)
        sock.bind((source, 0))
        sock.connect(server.address)
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return sock.recv(1000)
        except TimeoutError:
            raise  # neither served nor closed: a failure
        except OSError:  # reset, or already closed (ENOTCONN): refused
            return b""


def answer(server: Server, payload: bytes, source: str = "127.0.0.1") -> tuple[int, object]:
    pid, _, addr = ask(server, payload, source).decode().strip().partition(" ")
    return int(pid), ast.literal_eval(addr)


def test_server_reads_v1_and_v2_and_closes_bad_headers(server: Server) -> None:
    server.start("--proxy-protocol", "--proxy-allow", "127.0.0.1/32", "--handshake-timeout", "1",
                 app="testapps:pid_peer", workers=1).wait_ready(1)
    pid, addr = answer(server, b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n")
    assert addr == ("10.1.2.3", 5555)
    assert answer(server, v2_tcp6("2001:db8::5", 4444)) == (pid, ("2001:db8::5", 4444, 0, 0))
    local = answer(server, v2(command=0, family=0, body=b""))
    assert local[0] == pid and local[1][0] == "127.0.0.1"  # type: ignore[index]
    bad = [b"GET / HTTP/1.0\r\n\r\n", b"PROXY TCP4 10.1.2.3\r\n", v2()[:20], b"PROXY TCP9 x\r\n" + b"y" * 200]
    for payload in bad:
        assert ask(server, payload) == b"", payload
        assert answer(server, b"PROXY UNKNOWN\r\n")[0] == pid  # the same worker goes on
    # An untrusted sender is closed even with a well-formed header.
    assert ask(server, b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n", source="127.0.0.2") == b""
    # No header at all within --handshake-timeout: closed (the client never half-closes here).
    with socket.create_connection(server.address) as sock:
        sock.settimeout(20)
        assert sock.recv(100) == b""
    assert answer(server, b"PROXY UNKNOWN\r\n")[0] == pid
    wait_for(lambda: "not a trusted PROXY protocol sender" in server.log(), what="untrusted refusal logged")


def test_access_rules_apply_to_the_real_client(server: Server) -> None:
    server.start("--proxy-protocol", "--deny", "10.0.0.0/8", "--max-per-source", "1",
                 app="testapps:pid_peer", workers=1).wait_ready(1)
    assert ask(server, b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n") == b""
    assert answer(server, b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 80\r\n")[1] == ("192.0.2.1", 5555)
    wait_for(lambda: "refused connection from 10.1.2.3:5555: denied" in server.log(), what="refusal logged")


def test_unix_socket_peers_are_trusted(server: Server, tmp_path: Path) -> None:
    path = str(tmp_path / "lb.sock")
    server.start("--bind", f"unix:{path}", "--proxy-protocol", "--proxy-allow", "192.0.2.1",
                 bind=False, app="testapps:pid_peer", workers=1).wait_ready(1)
    answer = request(path, b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n")
    assert answer.decode().split(" ", 1)[1].strip() == repr(("2001:db8::1", 4000, 0, 0))


# --- a real HAProxy in front ---

HAPROXY_CONFIG = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend front
    bind 127.0.0.1:{front}
    default_backend back
backend back
    server prefork 127.0.0.1:{back} {send}
"""


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[[int, str], int]]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed (apt-get install haproxy)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(back: int, send: str) -> int:
        front = free_port()
        config = tmp_path / f"haproxy-{front}.cfg"
        config.write_text(HAPROXY_CONFIG.format(front=front, back=back, send=send))
        procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for(lambda: _listening(front), 15, what="haproxy listening")
        return front

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(5)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_real_haproxy(server: Server, haproxy: Callable[[int, str], int], send: str) -> None:
    server.start("--proxy-protocol", app="testapps:pid_peer", workers=1).wait_ready(1)
    front = haproxy(server.port, send)
    with socket.socket() as sock:
        sock.settimeout(20)
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", front))
        client_port = sock.getsockname()[1]
        sock.shutdown(socket.SHUT_WR)
        pid, _, addr = sock.recv(1000).decode().strip().partition(" ")
    assert ast.literal_eval(addr) == ("127.0.0.2", client_port)
    assert int(pid) in server.worker_pids()
