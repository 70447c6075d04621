"""Who may connect: address rules (--allow/--deny) and the per-source limit.

Both look only at a client's IP address: the one ``accept()`` returned, or the
real client's once a PROXY header has named it. Unix-socket peers have no
address; the socket file's mode and owner decide who reaches them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import ConfigError
from .scoreboard import BUSY, Scoreboard

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def parse_network(text: str) -> Network:
    """``10.0.0.0/8``, ``2001:db8::/32`` or a bare address (one host); ConfigError names the mistake."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            suggestion = ipaddress.ip_network(text, strict=False)
            raise ConfigError(f"{text!r} has host bits set (did you mean {suggestion}?)") from None
        raise ConfigError(f"{text!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8, ::1)") from None


def network_list(value: object) -> tuple[Network, ...]:
    """A setting's list of networks, from a comma-separated string or a TOML list."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{value!r} is not a list of networks")
    networks = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{item!r} is not a network (expected a string like '10.0.0.0/8')")
        if item.strip():
            networks.append(parse_network(item))
    return tuple(networks)


def client_ip(addr: Any) -> IPAddress | None:
    """The IP address of an ``accept()``-style address; None for unix peers.

    An IPv4-mapped IPv6 address (``::ffff:10.1.2.3``) is the IPv4 client it
    stands for, so that IPv4 rules apply to it.
    """
    if not isinstance(addr, tuple) or not addr:
        return None
    try:
        ip = ipaddress.ip_address(addr[0].partition("%")[0])  # drop an IPv6 zone (fe80::1%eth0)
    except (ValueError, AttributeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_any(ip: IPAddress, networks: tuple[Network, ...]) -> bool:
    # An address of one family is simply not in a network of the other: no error to catch.
    return any(ip in network for network in networks)


class AccessRules:
    """--allow and --deny: deny wins; with any allow rule, an unlisted address is refused."""

    def __init__(self, allow: tuple[Network, ...], deny: tuple[Network, ...]) -> None:
        self.allow = allow
        self.deny = deny

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` is refused, or None when it may connect."""
        if in_any(ip, self.deny):
            return "denied (--deny)"
        if self.allow and not in_any(ip, self.allow):
            return "not allowed (--allow)"
        return None


def peer_prefix(peer_text: str) -> bytes:
    """The host part of a scoreboard peer text (``10.1.2.3:5000``, ``[::1]:5000``), with its colon."""
    return peer_text.rpartition(":")[0].encode() + b":"


def count_busy_from(scoreboard: Scoreboard, prefix: bytes) -> int:
    """Busy workers (of every generation) serving a client whose peer text starts with ``prefix``.

    Only the slots the master ever handed out are read, so the scan costs a few
    workers' worth of memory reads, not the whole table.
    """
    count = 0
    slots = scoreboard.slots
    for number in range(min(scoreboard.header.high_water, scoreboard.capacity)):
        slot = slots[number]
        if slot.state == BUSY and slot.peer[: len(prefix)] == prefix:
            count += 1
    return count
