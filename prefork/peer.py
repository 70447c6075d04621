"""What serves a connection, and how its peer is written in logs and on the scoreboard.

A leaf: it imports nothing of prefork, so that the worker, the connection set-up and
the HTTP package can all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A connection handler: called with the accepted socket and the peer address.
Handler = Callable[[Any, Any], None]


def format_peer(addr: Any) -> str:
    """``host:port`` for TCP peers, ``unix`` for unnamed unix peers."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = peer_host(addr[0])  # ::ffff:10.1.2.3 is 10.1.2.3, in logs and in --max-per-source
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return f"unix:{addr}" if addr else "unix"


def peer_host(host: str) -> str:
    """A peer's host as shown and counted (--max-per-source): an IPv4-mapped address as its IPv4 form.

    The same normal form as the address rules' (``access.client_ip``, ``access.normal_network``).
    """
    return host[7:] if host.startswith("::ffff:") and "." in host else host
