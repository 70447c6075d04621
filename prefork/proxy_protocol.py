"""The PROXY protocol, versions 1 and 2: the real client's address, sent by a load balancer.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

A load balancer that connects to us on a client's behalf first sends one
header naming the client, then the client's bytes. The header is read here,
exactly (never a byte of what follows: the handler reads that from the same
socket), within a deadline, and parsed strictly: anything else is an error.
Parsing is pure (:func:`parse_v1`, :func:`parse_v2`) so that it can be fuzzed.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from typing import Any

from .record import dataclass

V1_PREFIX = b"PROXY "
V1_MIN = len(b"PROXY UNKNOWN\r\n")  # the shortest header of either version: reading this much is safe
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/protocol, length
V2_HEAD = struct.Struct("!BBH")
# Family/protocol byte -> (address family, bytes of addresses and ports, struct of them)
V2_INET = {
    0x11: (socket.AF_INET, struct.Struct("!4s4sHH")),  # TCP over IPv4
    0x21: (socket.AF_INET6, struct.Struct("!16s16sHH")),  # TCP over IPv6
}
V2_OTHER = {0x00, 0x12, 0x22, 0x31, 0x32}  # unspecified, UDP, unix: valid, but no TCP client to name


class ProxyProtocolError(Exception):
    """A missing, malformed, truncated or late PROXY header."""


class NoHeader(ProxyProtocolError):
    """The peer closed without sending a byte: a port probe or a load balancer's TCP health check."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header said: the client's address, or None (LOCAL, UNKNOWN: use the real peer)."""

    version: int
    client: tuple[Any, ...] | None


def read_header(sock: socket.socket, deadline: float) -> ProxyHeader:
    """Read one header from ``sock`` before ``deadline`` (time.monotonic()), and nothing more."""
    start = _recv_exact(sock, V1_MIN, deadline, opening=True)
    if start.startswith(V1_PREFIX):
        return parse_v1(start + _read_v1_rest(sock, start, deadline))
    if start[:12] == V2_SIGNATURE:
        fixed = start + _recv_exact(sock, V2_FIXED - V1_MIN, deadline)
        return parse_v2(fixed + _recv_exact(sock, v2_length(fixed), deadline))
    raise ProxyProtocolError("no PROXY header (the connection did not start with one)")


def _read_v1_rest(sock: socket.socket, start: bytes, deadline: float) -> bytes:
    """The rest of a v1 line, up to its newline and not one byte further.

    Peek at what has arrived; consume up to the newline if it is there, else
    consume all of it (it is all header) and wait for more.
    """
    if b"\n" in start:
        return b""  # "PROXY UNKNOWN\r\n" exactly, or garbage parse_v1 will refuse
    rest = b""
    while True:
        room = V1_MAX - len(start) - len(rest)
        if room <= 0:
            raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
        seen = _recv(sock, room, deadline, socket.MSG_PEEK)
        if not seen:
            raise ProxyProtocolError("connection closed inside the PROXY header")
        end = seen.find(b"\n")
        take = end + 1 if end >= 0 else len(seen)
        rest += _recv_exact(sock, take, deadline)
        if end >= 0:
            return rest


def v2_length(fixed: bytes) -> int:
    """How many address bytes follow a v2 header's 16 fixed bytes."""
    return int(V2_HEAD.unpack_from(fixed, 12)[2])


def parse_v1(line: bytes) -> ProxyHeader:
    """Parse ``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`` or ``PROXY UNKNOWN...\\r\\n``."""
    if not line.endswith(b"\r\n") or b"\n" in line[:-1] or b"\r" in line[:-2]:
        raise ProxyProtocolError("PROXY v1 header does not end with CRLF")
    if len(line) > V1_MAX:
        raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
    try:
        fields = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    if len(fields) >= 2 and fields[0] == "PROXY" and fields[1] == "UNKNOWN":
        return ProxyHeader(1, None)
    if len(fields) != 6 or fields[0] != "PROXY" or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 header {line[:V1_MAX]!r}")
    version = 4 if fields[1] == "TCP4" else 6
    source = _v1_address(fields[2], version)
    _v1_address(fields[3], version)
    port = _v1_port(fields[4])
    _v1_port(fields[5])
    return ProxyHeader(1, (source, port) if version == 4 else (source, port, 0, 0))


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 header: {text[:64]!r} is not an IP address") from None
    if address.version != version or "%" in text:
        raise ProxyProtocolError(f"PROXY v1 header: {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    # Digits only (int() would take "+1", " 1", "1_0"), no leading zero, at most 65535.
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1 header: {text[:16]!r} is not a port number")
    return int(text)


def parse_v2(header: bytes) -> ProxyHeader:
    """Parse a whole binary v2 header (16 fixed bytes plus the length they announce)."""
    if len(header) < V2_FIXED or header[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("PROXY v2 header without its signature")
    version_command, family, length = V2_HEAD.unpack_from(header, 12)
    if len(header) != V2_FIXED + length:
        raise ProxyProtocolError("PROXY v2 header truncated")
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header with unknown command {command}")
    if family not in V2_INET and family not in V2_OTHER:
        raise ProxyProtocolError(f"PROXY v2 header with unknown address family 0x{family:02x}")
    if command == 0 or family not in V2_INET:
        return ProxyHeader(2, None)  # LOCAL (a health check), or no TCP client named: the real peer
    af, layout = V2_INET[family]
    if length < layout.size:
        raise ProxyProtocolError("PROXY v2 header too short for its addresses")
    source, _, port, _ = layout.unpack_from(header, V2_FIXED)
    host = socket.inet_ntop(af, source)
    return ProxyHeader(2, (host, port) if af == socket.AF_INET else (host, port, 0, 0))


def _recv(sock: socket.socket, size: int, deadline: float, flags: int = 0) -> bytes:
    """One recv of up to ``size`` bytes, waiting no later than ``deadline``; b"" at EOF."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ProxyProtocolError("no complete PROXY header before the handshake timeout")
    sock.settimeout(remaining)
    try:
        return sock.recv(size, flags)
    except TimeoutError:
        raise ProxyProtocolError("no complete PROXY header before the handshake timeout") from None


def _recv_exact(sock: socket.socket, size: int, deadline: float, opening: bool = False) -> bytes:
    """Exactly ``size`` bytes; ``opening`` when these are the connection's first bytes."""
    chunks: list[bytes] = []
    while size > 0:
        data = _recv(sock, size, deadline)
        if not data:
            if opening and not chunks:
                raise NoHeader("connection closed before sending anything")
            raise ProxyProtocolError("connection closed inside the PROXY header")
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)
