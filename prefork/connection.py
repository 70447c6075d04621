"""What happens to a connection between accept() and the handler.

Chosen once when a worker boots, from the settings, in this order:

1. the PROXY header, when --proxy-protocol (from a trusted load balancer only):
   it gives the real client address that every later step looks at;
2. --allow / --deny on that address;
3. --max-per-source, counted in the shared scoreboard across all workers;
4. the TLS handshake, when --certfile;
5. --idle-timeout on the socket handed to the handler.

Steps 1 and 4 share one deadline, --handshake-timeout after accept(). A
connection that fails any step is closed before any application code runs
and the worker goes on with the next. With none of these settings, there is no
preparation at all (:func:`make_preparer` returns None) and the worker's hot
path is what it was.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .access import AccessRules, ClientIP, client_ip, compile_rules, count_busy_from, in_any, peer_prefix
from .peer import format_peer
from .proxy_protocol import NoHeader, ProxyProtocolError, read_header
from .scoreboard import Scoreboard, Slot
from .settings import Settings

if TYPE_CHECKING:
    from ssl import SSLContext, SSLSocket

log = logging.getLogger("prefork")

Prepare = Callable[[socket.socket, Any], tuple[socket.socket, Any]]


class Refused(Exception):
    """The connection was refused or failed before the handler; it is already logged."""


class RateLimitedLog:
    """At most ``burst`` lines per ``window`` seconds, then one line counting what was left out.

    A flood of refused connections must not fill the disk, nor cost a write per
    connection; the count keeps the size of the flood visible.
    """

    def __init__(self, burst: int = 10, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window = window
        self.clock = clock
        self.window_start = -window  # the first line opens a window
        self.logged = 0
        self.suppressed = 0

    def info(self, message: str, *args: object) -> bool:
        """Log at info level unless over the limit; True when the line was written."""
        now = self.clock()
        if now - self.window_start >= self.window:
            if self.suppressed:
                log.info("%d more refused connections were not logged (at most %d lines per %gs)",
                         self.suppressed, self.burst, self.window)
            self.window_start, self.logged, self.suppressed = now, 0, 0
        if self.logged >= self.burst:
            self.suppressed += 1
            return False
        self.logged += 1
        log.info(message, *args)
        return True


class Preparer:
    """The configured steps, applied to each connection (see the module docstring)."""

    def __init__(self, settings: Settings, scoreboard: Scoreboard, slot: Slot, context: SSLContext | None) -> None:
        self.settings = settings
        self.scoreboard = scoreboard
        self.slot = slot
        self.rules = AccessRules(settings.allow, settings.deny) if settings.allow or settings.deny else None
        self.context = context  # loaded by the master for this generation (tls.load_context)
        self.proxy_allow = compile_rules(settings.proxy_allow)
        self.idle_timeout = settings.idle_timeout or None
        # The PROXY and TLS steps leave a timeout on the socket; plain blocking sockets need no call.
        self.sets_timeout = bool(self.idle_timeout or settings.proxy_protocol or self.context)
        self.refusals = RateLimitedLog()
        self.format_peer = format_peer

    def __call__(self, conn: socket.socket, addr: Any) -> tuple[socket.socket, Any]:
        """The socket and address to hand to the handler; raises Refused after closing it."""
        deadline = time.monotonic() + self.settings.handshake_timeout
        try:
            if self.settings.proxy_protocol:
                addr = self.read_proxy_header(conn, addr, deadline)
            ip = client_ip(addr)  # None for unix peers: neither rules nor limits apply to them
            if ip is not None and self.rules is not None:
                self.check_access(ip, addr)
            if ip is not None and self.settings.max_per_source:
                self.check_per_source(addr)
            if self.context is not None:
                conn = self.handshake(conn, addr, deadline)
            if self.sets_timeout:
                conn.settimeout(self.idle_timeout)
        except Refused:
            conn.close()
            raise
        except OSError as exc:  # reset by the client, or gone, while we prepared
            conn.close()
            log.debug("connection from %s failed before the handler: %s", self.format_peer(addr), exc)
            raise Refused from None
        return conn, addr

    def refuse(self, addr: Any, why: str) -> Refused:
        self.refusals.info("refused connection from %s: %s", self.format_peer(addr), why)
        return Refused(why)

    def read_proxy_header(self, conn: socket.socket, addr: Any, deadline: float) -> Any:
        """The real client's address from the header, if the peer is a trusted load balancer."""
        ip = client_ip(addr)
        if ip is not None and not in_any(ip, self.proxy_allow):
            raise self.refuse(addr, "not a trusted PROXY protocol sender (--proxy-allow)")
        try:
            header = read_header(conn, deadline)
        except NoHeader:
            log.debug("connection from %s closed before its PROXY header (a health check?)", self.format_peer(addr))
            raise Refused from None
        except ProxyProtocolError as exc:
            raise self.refuse(addr, str(exc)) from None
        if header.client is None:
            return addr  # LOCAL / UNKNOWN: the load balancer speaks for itself
        self.slot.set_peer(self.format_peer(header.client))
        return header.client

    def check_access(self, ip: ClientIP, addr: Any) -> None:
        assert self.rules is not None
        why = self.rules.refusal(ip)
        if why is not None:
            raise self.refuse(addr, why)

    def check_per_source(self, addr: Any) -> None:
        """Refuse past --max-per-source busy workers serving this client host.

        Our own slot already shows this client (marked before counting), so two
        workers racing on the same host may both refuse, but never both admit.
        (One slot per worker is one connection per worker: hence no --threads.)
        """
        busy = count_busy_from(self.scoreboard, peer_prefix(self.format_peer(addr)))
        if busy > self.settings.max_per_source:
            raise self.refuse(addr, f"{busy - 1} connections from this host already served (--max-per-source)")

    def handshake(self, conn: socket.socket, addr: Any, deadline: float) -> SSLSocket:
        import ssl  # here (a dictionary look-up per handshake): ssl stays out of a server without TLS

        from . import tls

        assert self.context is not None
        try:
            return tls.handshake(self.context, conn, deadline)
        except TimeoutError:
            raise self.refuse(addr, "TLS handshake not done before --handshake-timeout") from None
        except ssl.SSLError as exc:
            raise self.refuse(addr, f"TLS handshake failed: {exc.reason or exc}") from None


def make_preparer(settings: Settings, scoreboard: Scoreboard, slot: Slot,
                  context: SSLContext | None = None) -> Prepare | None:
    """The preparation for this worker, or None when no setting asks for one (the fast path)."""
    wanted = (
        settings.proxy_protocol or settings.allow or settings.deny or settings.max_per_source
        or settings.certfile or settings.idle_timeout
    )
    return Preparer(settings, scoreboard, slot, context) if wanted else None

