"""Who may connect: address rules (--allow/--deny) and the per-source limit.

Both look only at a client's IP address: the one ``accept()`` returned, or the
real client's once a PROXY header has named it. Unix-socket peers have no
address; the socket file's mode and owner decide who reaches them.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, NamedTuple

from .errors import ConfigError
from .scoreboard import BUSY, Scoreboard

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
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


class ClientIP(NamedTuple):
    """A client's IP address as integers: compared against rules with one AND, no objects built."""

    version: int  # 4 or 6
    value: int


class Rule(NamedTuple):
    """A network compiled for matching: ``value & mask == network``."""

    version: int
    network: int
    mask: int


Rules = tuple[Rule, ...]
MAPPED_IPV4 = 0xFFFF << 32  # ::ffff:0:0/96


MAPPED_NETWORK = ipaddress.IPv6Network("::ffff:0:0/96")


def normal_network(network: Network) -> Network:
    """The one form a rule is compared in: an IPv4-mapped IPv6 network is its IPv4 network.

    ``::ffff:10.0.0.0/104`` is ``10.0.0.0/8``, as a mapped client address is the
    IPv4 client it stands for (see :func:`client_ip`). A wider IPv6 network
    (``::/0``) stays a rule about IPv6 clients.
    """
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(MAPPED_NETWORK):
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def compile_rules(networks: tuple[Network, ...]) -> Rules:
    normal = [normal_network(n) for n in networks]
    return tuple(Rule(n.version, int(n.network_address), int(n.netmask)) for n in normal)


def client_ip(addr: Any) -> ClientIP | None:
    """The IP address of an ``accept()``-style address; None for unix peers.

    An IPv4-mapped IPv6 address (``::ffff:10.1.2.3``) is the IPv4 client it
    stands for, so that IPv4 rules apply to it.
    """
    if not isinstance(addr, tuple) or not addr or not isinstance(addr[0], str):
        return None
    host = addr[0]
    try:
        if ":" not in host:
            return ClientIP(4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big"))
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.partition("%")[0]), "big")
    except OSError:
        return None
    if value >> 32 == 0xFFFF:
        return ClientIP(4, value & 0xFFFFFFFF)
    return ClientIP(6, value)


def in_any(ip: ClientIP, rules: Rules) -> bool:
    version, value = ip
    return any(rule.version == version and value & rule.mask == rule.network for rule in rules)


class AccessRules:
    """--allow and --deny: deny wins; with any allow rule, an unlisted address is refused."""

    def __init__(self, allow: tuple[Network, ...], deny: tuple[Network, ...]) -> None:
        self.allow = compile_rules(allow)
        self.deny = compile_rules(deny)

    def refusal(self, ip: ClientIP) -> str | None:
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
