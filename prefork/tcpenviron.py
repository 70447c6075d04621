"""The environment of an --exec program: tcp-environ(5), systemd Accept=yes and mod_ssl names.

ucspi-tcp's tcpserver names a connection ``PROTO=TCP``, ``TCPLOCALIP``,
``TCPLOCALPORT``, ``TCPREMOTEIP``, ``TCPREMOTEPORT`` (ucspi-unix: ``PROTO=UNIX``,
``UNIXREMOTEPID``...); systemd's ``Accept=yes`` sets ``REMOTE_ADDR`` and
``REMOTE_PORT``; mod_ssl names a TLS session ``SSL_PROTOCOL``, ``SSL_CIPHER``
and ``SSL_CLIENT_S_DN``. The remote address is the real client's, from a
PROXY header when there was one.
"""

from __future__ import annotations

import os
import pwd
import socket
import struct
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .settings import Settings

if TYPE_CHECKING:
    from ssl import SSLSocket

# Never passed to the program: our own settings and systemd's messages to us.
PRIVATE_PREFIXES = ("PREFORK_", "_PREFORK_", "LISTEN_")
PRIVATE_NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
PEERCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
# certificate attribute names -> the short names of RFC 4514 (mod_ssl's SSL_CLIENT_S_DN)
DN_NAMES = {
    "commonName": "CN", "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
    "organizationName": "O", "organizationalUnitName": "OU", "domainComponent": "DC",
    "streetAddress": "STREET", "userId": "UID",
}


def base_environment(environ: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """The worker's environment less prefork's own variables, plus --exec-env.

    With --user, HOME, USER and LOGNAME name that user, as systemd's User= sets them
    (the master's own HOME would be root's, which the program cannot read).
    """
    env = {key: value for key, value in environ.items()
           if not key.startswith(PRIVATE_PREFIXES) and key not in PRIVATE_NAMES}
    if settings.user:
        try:
            entry = pwd.getpwuid(os.getuid())
        except KeyError:  # a numeric uid without a passwd entry: nothing to say
            pass
        else:
            env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    for item in settings.exec_env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def connection_environment(conn: socket.socket, addr: Any) -> dict[str, str]:
    """tcp-environ(5) and systemd Accept=yes variables for one connection; ``addr`` is the real client."""
    env: dict[str, str] = {}
    try:
        local = conn.getsockname()
    except OSError:
        local = None
    if isinstance(addr, tuple):
        env["PROTO"] = "TCP"
        env["TCPREMOTEIP"] = env["REMOTE_ADDR"] = str(addr[0])
        env["TCPREMOTEPORT"] = env["REMOTE_PORT"] = str(addr[1])
        if isinstance(local, tuple):
            env["TCPLOCALIP"], env["TCPLOCALPORT"] = str(local[0]), str(local[1])
    else:
        env["PROTO"] = "UNIX"
        if local:
            env["UNIXLOCALPATH"] = str(local)
        env.update(unix_peer(conn))
    tls = tls_session(conn)
    if tls is not None:
        env.update(tls_environment(tls))
    return env


def tls_session(conn: socket.socket) -> SSLSocket | None:
    """The connection as TLS, when connection.py made it one (--certfile), else None.

    Without TLS nothing loaded ssl, and no socket can be one: it is not imported for the question.
    """
    if "ssl" not in sys.modules:
        return None
    import ssl

    return conn if isinstance(conn, ssl.SSLSocket) else None


def unix_peer(conn: socket.socket) -> dict[str, str]:
    """ucspi-unix's UNIXREMOTEPID/EUID/EGID from SO_PEERCRED."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    except OSError:
        return {}
    pid, uid, gid = PEERCRED.unpack(raw)
    return {"UNIXREMOTEPID": str(pid), "UNIXREMOTEEUID": str(uid), "UNIXREMOTEEGID": str(gid)}


def tls_environment(conn: SSLSocket) -> dict[str, str]:
    """mod_ssl's names: SSL_PROTOCOL, SSL_CIPHER, and the verified client certificate's subject."""
    env = {"SSL_PROTOCOL": conn.version() or "", "SSL_CIPHER": (conn.cipher() or ("",))[0]}
    cert = conn.getpeercert()
    if cert:
        env["SSL_CLIENT_S_DN"] = format_dn(cert.get("subject", ()))
        env["SSL_CLIENT_VERIFY"] = "SUCCESS"
    else:
        env["SSL_CLIENT_VERIFY"] = "NONE"
    return env


def format_dn(subject: Any) -> str:
    """A certificate subject as an RFC 4514 string (most specific first: ``CN=alice,O=Example``)."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{DN_NAMES.get(key, key)}={escape_dn(value)}" for key, value in rdn))
    return ",".join(rdns)


def escape_dn(value: str) -> str:
    escaped = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return escaped
