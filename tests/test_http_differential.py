"""prefork's HTTP/1.1 request parsing, side by side with h11 (a strict, pure-Python RFC 9112 parser).

A hypothesis strategy builds request streams: one to three pipelined requests, valid and mutated
(duplicated or missing Host, Content-Length and Transfer-Encoding mixes and duplicates, OWS and
obs-fold, chunk sizes, extensions and trailers, bare CR and LF, NUL and other controls, odd versions,
methods and targets). Each stream goes, on a connection of its own, to one long-running
``prefork run --wsgi`` whose application (``wsgiapps:record``) answers what it saw as JSON, and to an
``h11.Connection`` playing the server. The test fails when

- h11 accepts a request and prefork's application saw another method, target, fields or body,
- h11 rejects a request and prefork's application ran for it,
- or the two count a different number of requests,

unless the first request where they part carries a feature on one of the two lists below, each
with the clause that decides it. Every generated request records its features as it is built, so
a mutation the lists do not name is never excused. A failure prints the stream as raw bytes.

``PREFORK_FUZZ_EXAMPLES`` sets the number of examples (default 150, kept small for CI; e.g. 5000 for
a longer run).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Server
from http_helpers import parse_responses, read_until_closed, start_http

pytest.importorskip("httptools")
h11 = pytest.importorskip("h11")
from hypothesis import HealthCheck, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("PREFORK_FUZZ_EXAMPLES", "150"))

# Where prefork departs from h11 on purpose, and the clause that allows it (README, "Deviations").
PREFORK_DEVIATIONS = {
    "double-sp": "RFC 9112 3: a recipient MAY parse the request line on whitespace-delimited word boundaries",
    "underscore": "RFC 9110 5.1, RFC 3875 4.1.18: X_A and X-A are one CGI variable; names with _ are dropped",
    "same-cl-twice": "RFC 9110 8.6: a recipient MAY reject repeated identical Content-Length values",
    "unknown-method": "RFC 9110 9.1: llhttp knows the registered methods only; others are refused (400)",
    "minor-version": "RFC 9110 2.5: HTTP/1.x with x > 1 is served as HTTP/1.1 (h11 keeps the version)",
}
# Where h11 is looser or stricter than the RFC, and the clause that decides it.
H11_DISAGREEMENTS = {
    "bare-lf": "RFC 9112 2.2: a bare LF MAY be accepted as a line end; prefork (llhttp) refuses it (400)",
    "obs-fold": "RFC 9112 5.2: a server MUST reject obs-fold with 400 or replace it with SP; h11 replaces it",
    "http10-te": "RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 request MUST be treated as faulty framing",
    "cl-and-te": "RFC 9112 6.3 (3): Content-Length with Transfer-Encoding ought to be handled as an error",
    "cl-list": "RFC 9110 8.6: a Content-Length list MAY be rejected; h11 folds '5, 5' into 5",
    "other-version": "RFC 9110 15.6.6: a major version other than 1 is answered 505; h11 accepts any d.d",
    "leading-crlf": "RFC 9112 2.2: a server SHOULD ignore empty lines before the request line; h11 refuses",
    "bws-before-semicolon": "RFC 9112 7.1.1: chunk-ext = *( BWS \";\" ... ); h11 refuses '5 ;a'",
    "ctl-in-value": "RFC 9110 5.5: field values are VCHAR, obs-text, SP and HTAB; h11 accepts other controls",
    "ext-garbage": "RFC 9112 7.1.1: a chunk-ext is a token [= token / quoted-string]; h11 accepts anything",
    "target-char": "RFC 9112 3.2, RFC 3986 2: characters outside the URI grammar; h11 accepts any VCHAR",
    "fragment": "RFC 9112 3.2: no fragment in a request-target; both serve it (prefork drops it from the path)",
}


@dataclass
class Built:
    """One generated request: its bytes and the features it was built with."""

    data: bytes
    features: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("http-differential"))
    start_http(server, app="wsgiapps:record", workers=1)
    yield server
    server.stop()


# --- the strategy ---

TOKEN = "!#$%&'*+-.^`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VALUE = "".join(chr(c) for c in range(0x21, 0x7F))
PATH = "abcxyz0123456789-._~!$&'()*+,;=:@/%"


@st.composite
def requests(draw: Any) -> Built:  # noqa: C901 -- one branch per kind of mutation, read top to bottom
    built = Built(b"")
    eol = b"\r\n"
    if draw(st.integers(0, 30)) == 0:
        eol = b"\n"
        built.features.add("bare-lf")
    if draw(st.integers(0, 30)) == 0:
        built.data += b"\r\n"
        built.features.add("leading-crlf")
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"GET", b"POST"]))
    if draw(st.integers(0, 30)) == 0:
        method = draw(st.sampled_from([b"FOO", b"get", b"BREW"]))
        built.features.add("unknown-method")
    target = b"/" + draw(st.text(PATH, max_size=20)).encode()
    if draw(st.booleans()):
        target += b"?" + draw(st.text(PATH + "?", max_size=15)).encode()
    if draw(st.integers(0, 10)) == 0:
        target += b"#" + draw(st.text(PATH, max_size=5)).encode()
        built.features.add("fragment")
    if draw(st.integers(0, 20)) == 0:
        target += draw(st.sampled_from([b'"', b"<", b">", b"{", b"}", b"\\", b"^", b"`", b"|", b"[", b"]"]))
        built.features.add("target-char")
    version = draw(st.sampled_from([b"1.1"] * 6 + [b"1.0"] * 2 + [b"2.0", b"0.9", b"1.2", b"3.1"]))
    if version in (b"2.0", b"0.9", b"3.1"):
        built.features.add("other-version")
    if version == b"1.2":
        built.features.add("minor-version")
    sp = b" "
    if draw(st.integers(0, 30)) == 0:
        sp = b"  "
        built.features.add("double-sp")
    line = method + sp + target + sp + b"HTTP/" + version
    if draw(st.integers(0, 40)) == 0:
        line = method + b" " + target  # no version at all
    lines = [line]

    hosts = draw(st.sampled_from([1] * 8 + [0, 2]))
    for _ in range(hosts):
        lines.append(b"Host: " + draw(st.sampled_from([b"example.com", b"x", b"127.0.0.1:8000", b""])))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.text(TOKEN, min_size=1, max_size=10)).encode()
        if name.lower() in (b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade",
                            b"expect", b"trailer", b"te"):
            name = b"X-" + name
        name = b"X-" + name if draw(st.booleans()) else name
        value = draw(st.text(VALUE + " \t", max_size=20)).strip(" \t").encode()
        if draw(st.integers(0, 15)) == 0:
            name += b"_u"
            built.features.add("underscore")
        lead, trail = draw(st.sampled_from([b"", b" ", b"\t", b"  "])), draw(st.sampled_from([b"", b"", b" ", b"\t "]))
        mutation = draw(st.integers(0, 40))
        if mutation == 0:
            value += b"\x00"
        elif mutation == 1:
            value += draw(st.sampled_from([b"\x01", b"\x1f", b"\x7f", b"\x08"]))
            built.features.add("ctl-in-value")
        elif mutation == 2:
            value += b"\rx"
        elif mutation == 3:
            name += b" "
        lines.append(name + b":" + lead + value + trail)
        if draw(st.integers(0, 30)) == 0:
            lines.append(b" folded")
            built.features.add("obs-fold")
    if draw(st.integers(0, 6)) == 0:
        lines.append(b"Connection: " + draw(st.sampled_from([b"close", b"keep-alive"])))

    body = b""
    framing = draw(st.sampled_from(["none", "none", "length", "length", "chunked", "chunked", "odd"]))
    if framing == "length":
        payload = draw(st.binary(max_size=40))
        lines.append(b"Content-Length: " + str(len(payload)).encode() + draw(st.sampled_from([b"", b" "])))
        body = payload
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: " + draw(st.sampled_from([b"chunked", b"Chunked", b"chunked "])))
        body = draw(chunked_bodies(built, eol))
    elif framing == "odd":
        kind = draw(st.sampled_from(["cl-te", "two-cl", "same-cl", "cl-list", "bad-cl", "te-unknown",
                                     "te-gzip", "te-twice"]))
        payload = draw(st.binary(max_size=10))
        n = str(len(payload)).encode()
        extra = {
            "cl-te": [b"Content-Length: " + n, b"Transfer-Encoding: chunked"],
            "two-cl": [b"Content-Length: " + n, b"Content-Length: " + str(len(payload) + 1).encode()],
            "same-cl": [b"Content-Length: " + n, b"Content-Length: " + n],
            "cl-list": [b"Content-Length: " + n + b", " + n],
            "bad-cl": [b"Content-Length: " + draw(st.sampled_from([b"+1", b"-1", b"0x1", b"1 1", b"", b"a"]))],
            "te-unknown": [b"Transfer-Encoding: " + draw(st.sampled_from([b"xchunked", b"gzip", b"identity"]))],
            "te-gzip": [b"Transfer-Encoding: gzip, chunked"],
            "te-twice": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        }[kind]
        lines += draw(st.permutations(extra))
        body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload) if kind.startswith(("te", "cl-te")) else payload
        if kind == "cl-te":
            built.features.add("cl-and-te")
        elif kind == "same-cl":
            built.features.add("same-cl-twice")
        elif kind == "cl-list":
            built.features.add("cl-list")
    if version == b"1.0" and any(line.lower().startswith(b"transfer-encoding") for line in lines):
        built.features.add("http10-te")
    lines = draw(st.permutations(lines[1:])) if draw(st.booleans()) else lines[1:]
    built.data += eol.join([line, *lines]) + eol + eol + body
    return built


@st.composite
def chunked_bodies(draw: Any, built: Built, eol: bytes) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        payload = draw(st.binary(min_size=1, max_size=20))
        size = b"%x" % len(payload)
        size = draw(st.sampled_from([size, size.upper(), b"0" + size]))
        ext = draw(st.sampled_from([b""] * 6 + [b";a", b";a=b", b';a="q x"', b" ;a", b"; a=b", b";a = b", b";\x01",
                                               b" ", b";a;b=c"]))
        if ext == b" ;a":
            built.features.add("bws-before-semicolon")
        elif ext == b";\x01":
            built.features.add("ext-garbage")
        out += size + ext + b"\r\n" + payload + b"\r\n"
    out += b"0\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from([b"X-Trailer: t", b"X-Forwarded-For: 6.6.6.6", b"Host: evil",
                                     b"X-User: admin"])) + eol
    return out + eol


# --- the two parsers ---


def environ_fields(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """What a WSGI server makes of h11's header list: HTTP_* keys, repeated fields joined."""
    fields: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").upper()
        if "_" in name:
            continue
        key = name.replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1")
        if key in fields:
            value = fields[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        fields[key] = value
    return fields


def h11_view(stream: bytes) -> list[dict[str, Any]]:
    """The requests h11 reads whole from ``stream``, up to one it refuses; each is answered, so "close" ends it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
    conn.receive_data(stream)
    conn.receive_data(b"")
    seen: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    http10_keep_alive = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return seen
        if isinstance(event, h11.Request):
            http10_keep_alive = event.http_version == b"1.0" and any(
                name == b"connection" and b"keep-alive" in value.lower() for name, value in event.headers)
            current = {"method": event.method.decode("latin-1"), "target": event.target.decode("latin-1"),
                       "fields": environ_fields(list(event.headers.raw_items())), "body": b""}
        elif isinstance(event, h11.Data):
            assert current is not None
            current["body"] += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert current is not None
            current["body"] = current["body"].decode("latin-1")
            seen.append(current)
            current = None
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            elif http10_keep_alive:  # h11 closes every HTTP/1.0 connection (RFC 9112 C.2.2 allows keep-alive)
                rest = conn.trailing_data[0]
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
                conn.receive_data(rest)
                conn.receive_data(b"")
            else:
                return seen
        elif event is h11.PAUSED or event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return seen


def prefork_view(server: Server, stream: bytes) -> list[dict[str, Any]]:
    """What prefork's application saw of ``stream``, one dict per request it answered."""
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(stream)
        sock.shutdown(socket.SHUT_WR)
        data = read_until_closed(sock)
    seen = []
    for status, _headers, body in parse_responses(data, ["GET"] * 10):
        if status == 200:
            got = json.loads(body)
            seen.append({key: got[key] for key in ("method", "target", "fields", "body")})
    return seen


def normalized(view: dict[str, Any]) -> dict[str, Any]:
    """h11 lower-cases Transfer-Encoding values; compare those case-insensitively."""
    fields = dict(view["fields"])
    if "HTTP_TRANSFER_ENCODING" in fields:
        fields["HTTP_TRANSFER_ENCODING"] = fields["HTTP_TRANSFER_ENCODING"].lower()
    return {**view, "fields": fields}


def excused(built: Built) -> str | None:
    """The listed feature (and its clause) that explains a disagreement on this request, if any."""
    for feature in sorted(built.features):
        reason = PREFORK_DEVIATIONS.get(feature) or H11_DISAGREEMENTS.get(feature)
        if reason:
            return f"{feature}: {reason}"
    return None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(batch=st.lists(requests(), min_size=1, max_size=3))
def test_prefork_reads_requests_as_h11_does(web: Server, batch: list[Built]) -> None:
    stream = b"".join(built.data for built in batch)
    note(f"raw bytes: {stream!r}")
    theirs = h11_view(stream)
    ours = prefork_view(web, stream)
    for index, built in enumerate(batch):
        mine = ours[index] if index < len(ours) else None
        reference = theirs[index] if index < len(theirs) else None
        if mine is None and reference is None:
            break
        if mine is not None and reference is not None and normalized(mine) == normalized(reference):
            continue
        if excused(built):
            return  # the lists explain this request; what follows it is framed by it
        raise AssertionError(
            f"request {index} read differently\n  raw bytes: {stream!r}\n  request:   {built.data!r}\n"
            f"  h11:       {reference}\n  prefork:   {mine}")
    assert len(ours) == len(theirs), f"raw bytes: {stream!r}\n  h11: {theirs}\n  prefork: {ours}"


def parsed(pieces: list[bytes]) -> tuple[list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes, bool]], Any]:
    """What prefork's reader makes of a stream arriving in ``pieces``: each request, and the error."""
    from prefork.http.parser import Limits, RequestReader

    reader = RequestReader(Limits(4094, 100, 8190))
    for piece in pieces:
        reader.feed(piece)
    error = reader.error.status if reader.error else None
    return [(r.method, r.url, r.headers, b"".join(r.body_chunks), r.complete) for r in reader.queue], error


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(batch=st.lists(requests(), min_size=1, max_size=3), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_how_the_bytes_arrive_changes_nothing(batch: list[Built], cuts: list[int]) -> None:
    """Reads split anywhere give the requests one read gives (prefork finds chunked bodies itself)."""
    stream = b"".join(built.data for built in batch)
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    pieces = [stream[start:end] for start, end in zip([0, *points], [*points, len(stream)], strict=True)]
    split, whole = parsed([piece for piece in pieces if piece]), parsed([stream])
    if b"HTTP/0.9" in stream and split[1] in (400, 505):  # told apart in the read that ends the head (README)
        split = split[0], whole[1]
    assert split == whole, f"raw bytes: {stream!r}, cut at {points}"


def test_lists_cite_a_clause() -> None:
    for reason in [*PREFORK_DEVIATIONS.values(), *H11_DISAGREEMENTS.values()]:
        assert reason.startswith("RFC "), reason
