"""The WSGI environ (PEP 3333) of a request, and what trusted proxies may change in it.

The keys that stay the same for every request of a connection are built once
per connection (:func:`connection_environ`) and copied per request.

Proxy headers (``X-Forwarded-For``, ``-Proto``, ``-Prefix``) are believed only
from a peer in --forwarded-allow-ips, or a unix socket peer (a local proxy:
who may connect is the socket file's mode). ``X-Forwarded-For`` is read from
the right, skipping trusted proxies: the first untrusted address is the client.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import unquote_to_bytes

from .. import __version__
from ..access import Rules, client_ip, compile_rules, in_any
from ..record import dataclass
from ..settings import Settings
from .parser import Limits, Request

Environ = dict[str, Any]
KEYS_KEPT = 512  # field names whose environ key a handler remembers


@dataclass(frozen=True)
class HTTPConfig:
    """What the HTTP layer takes from the settings, once per worker."""

    limits: Limits
    keepalive: float
    root_path: str
    trusted: Rules
    multithread: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> HTTPConfig:
        return cls(
            limits=Limits(settings.limit_request_line, settings.limit_request_fields,
                          settings.limit_request_field_size),
            keepalive=settings.keepalive,
            root_path=settings.root_path.rstrip("/"),
            trusted=compile_rules(settings.forwarded_allow_ips),
            multithread=settings.threads > 1,
        )


def is_trusted(config: HTTPConfig, addr: Any) -> bool:
    """Whether ``addr`` (an accept()-style address) may set proxy headers."""
    ip = client_ip(addr)
    return ip is None or in_any(ip, config.trusted)


def connection_environ(config: HTTPConfig, addr: Any, tls: bool, file_wrapper: Any) -> Environ:
    """The keys shared by every request of one connection."""
    environ: Environ = {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if tls else "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": config.multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,  # the body ends at its end, Content-Length or not
        "wsgi.file_wrapper": file_wrapper,
        "SERVER_SOFTWARE": f"prefork/{__version__}",
        "SCRIPT_NAME": config.root_path,
    }
    if isinstance(addr, tuple) and len(addr) >= 2:
        environ["REMOTE_ADDR"] = addr[0]
        environ["REMOTE_PORT"] = str(addr[1])
    else:  # a unix socket peer has no address
        environ["REMOTE_ADDR"] = ""
    return environ


def request_environ(base: Environ, request: Request, trusted: Rules | None, local: Any,
                    keys: dict[bytes, str] | None = None) -> Environ:
    """The environ of ``request``.

    ``trusted``: the proxies' rules when the peer is one of them (None: ignore proxy headers);
    ``local``: a callable giving the server's (host, port) when there is no Host header;
    ``keys``: field name -> environ key, kept across requests (:func:`add_headers`).
    """
    environ = base.copy()
    url = request.url
    environ["REQUEST_METHOD"] = request.method
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
    environ["RAW_URI"] = url.decode("latin-1")
    if b"#" in url:  # a fragment is not part of a request target (RFC 9112 3.2): dropped, as peers do
        url = url.partition(b"#")[0]
    path, _, query = url.partition(b"?")
    if path[:1] not in (b"/", b"*"):  # absolute-form (http://host/path): the path is what follows the authority
        path = b"/" + path.partition(b"://")[2].partition(b"/")[2]
    environ["PATH_INFO"] = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
    environ["QUERY_STRING"] = query.decode("latin-1")
    add_headers(environ, request.headers, {} if keys is None else keys)
    if trusted is not None:
        apply_forwarded(environ, trusted)
    split_script_name(environ)
    add_server(environ, local)
    return environ


def add_headers(environ: Environ, headers: list[tuple[bytes, bytes]], keys: dict[bytes, str]) -> None:
    """``HTTP_*``, ``CONTENT_TYPE`` and ``CONTENT_LENGTH``; repeated fields joined as RFC 9110 says.

    ``keys`` remembers each field name's key (clients send the same few names on every request).
    """
    for raw_name, raw_value in headers:
        key = keys.get(raw_name)
        if key is None:
            key = environ_key(raw_name)
            if len(keys) < KEYS_KEPT:
                keys[raw_name] = key
        if not key:
            continue
        value = raw_value.decode("latin-1")
        if key in environ:
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value


def environ_key(raw_name: bytes) -> str:
    """The environ key of a field name; "" for a name with "_" (ignored)."""
    name = raw_name.decode("latin-1").upper()
    if "_" in name:
        return ""  # X_Forwarded_For would pass for X-Forwarded-For once mapped: ignore it
    key = name.replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def apply_forwarded(environ: Environ, trusted: Rules) -> None:
    """What a trusted proxy says about the client: its address, the scheme, the mount path."""
    forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        if hops:
            environ["REMOTE_ADDR"] = client_of(hops, trusted)
            environ.pop("REMOTE_PORT", None)  # the proxy's port, not the client's
    proto = environ.get("HTTP_X_FORWARDED_PROTO")
    if proto:
        scheme = proto.split(",")[0].strip().lower()
        if scheme in ("http", "https"):
            environ["wsgi.url_scheme"] = scheme
    prefix = environ.get("HTTP_X_FORWARDED_PREFIX")
    if prefix:
        environ["SCRIPT_NAME"] = prefix.split(",")[0].strip().rstrip("/")


def client_of(hops: list[str], trusted: Rules) -> str:
    """The rightmost hop that is not itself a trusted proxy (else the leftmost)."""
    for hop in reversed(hops):
        ip = client_ip((hop.strip("[]"), 0))
        if ip is None or not in_any(ip, trusted):
            return hop
    return hops[0]


def split_script_name(environ: Environ) -> None:
    """Take SCRIPT_NAME off the front of PATH_INFO when the proxy left it there."""
    script = environ["SCRIPT_NAME"]
    if script:
        path = environ["PATH_INFO"]
        if path == script or path.startswith(script + "/"):
            environ["PATH_INFO"] = path[len(script):]


def add_server(environ: Environ, local: Any) -> None:
    """SERVER_NAME and SERVER_PORT: from the Host header, else the socket's own address."""
    host = environ.get("HTTP_HOST")
    if host:
        name, sep, port = host.rpartition(":")
        if not sep or name.endswith(":") or "]" in port:  # no port (or a bare IPv6 address)
            name, port = host, ""
        environ["SERVER_NAME"] = name
        environ["SERVER_PORT"] = port or ("443" if environ["wsgi.url_scheme"] == "https" else "80")
        return
    name, port = local()
    environ["SERVER_NAME"] = name
    environ["SERVER_PORT"] = port
