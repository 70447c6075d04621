"""Bind addresses and the listening sockets made from them.

The master creates (or inherits) every listener before forking; workers only
ever ``accept()`` on them. Nothing here touches a connection.
"""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import pwd
import socket
import stat

from .errors import BindError, ConfigError
from .privileges import numeric_id
from .record import dataclass, field

BIND_FORMS = "HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N"
DEFAULT_UNIX_MODE = 0o660  # owner and group may connect; less any bits the umask removes
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL


@dataclass(frozen=True)
class Address:
    """One parsed ``--bind`` value."""

    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse one bind address, raising :class:`ConfigError` naming the form expected."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ConfigError(f"{text!r} has no path (expected unix:PATH)")
        size = len(os.fsencode(path))
        if size > UNIX_PATH_MAX:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ConfigError(f"unix socket path too long ({size} bytes, at most {UNIX_PATH_MAX}): {shown}")
        return Address("unix", path=path)
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not (number.isascii() and number.isdigit() and len(number) < 10):
            raise ConfigError(f"{text!r} is not a descriptor number (expected fd://N)")
        return Address("fd", fd=int(number))
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{text!r} is not a bind address (expected {BIND_FORMS})")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"{text!r} is not a bind address (expected {BIND_FORMS})")
        host = host or "0.0.0.0"  # gunicorn's :PORT, every IPv4 interface ([::]:PORT for IPv6)
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or int(port_text) > 65535:
        raise ConfigError(f"{text!r} has no valid port (expected a number 0-65535)")
    return Address("tcp", host=host, port=int(port_text))


@dataclass
class Listener:
    """A listening socket held by the master and inherited by every worker."""

    sock: socket.socket
    address: Address
    name: str
    # False for descriptors we inherited (fd://, systemd): their owner unlinks and closes them.
    owned: bool = True
    unlinked: bool = field(default=False, repr=False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def unlink(self) -> None:
        """Remove our unix socket file so that new clients are refused at once."""
        if self.owned and self.address.kind == "unix" and not self.unlinked:
            self.unlinked = True
            try:
                os.unlink(self.address.path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        self.unlink()
        self.sock.close()


@dataclass(frozen=True)
class Owner:
    """``--unix-owner USER[:GROUP]`` resolved to ids; -1 leaves that id unchanged (as chown does)."""

    uid: int = -1
    gid: int = -1


def parse_owner(text: str) -> Owner:
    """``USER``, ``USER:GROUP`` or ``:GROUP``, by name or number; ConfigError for unknown names."""
    user, _, group = text.strip().partition(":")
    if not user and not group:
        raise ConfigError(f"{text!r} names no user or group (expected USER[:GROUP])")
    return Owner(_user_id(user) if user else -1, _group_id(group) if group else -1)


def _user_id(name: str) -> int:
    number = numeric_id(name)
    if number is not None:
        return number
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ConfigError(f"{name!r} is not a user on this system") from None


def _group_id(name: str) -> int:
    number = numeric_id(name)
    if number is not None:
        return number
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"{name!r} is not a group on this system") from None


def create_listener(address: Address, backlog: int, reuse_port: bool = False, *,
                    unix_mode: int | None = None, unix_owner: Owner | None = None) -> Listener:
    """Create, bind and listen; raise :class:`BindError` with the address and OS error.

    A unix socket file gets ``unix_mode`` (default: 0660 less the umask's bits)
    and ``unix_owner`` before it listens, so no client ever meets looser rights.
    """
    if address.kind == "fd":
        return inherit_listener(address.fd, str(address), configured=address)
    if address.kind == "unix":
        return _create_unix(address, backlog, unix_mode, unix_owner)
    return _create_tcp(address, backlog, reuse_port)


def host_argument(host: str) -> str | bytes:
    """An IP address as bytes, a name as it is: getaddrinfo encodes a str with the idna codec, whose
    import (encodings.idna, stringprep, unicodedata) is about 1 ms of the start; an address is ASCII."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return host.encode("ascii")


def _create_tcp(address: Address, backlog: int, reuse_port: bool) -> Listener:
    try:
        infos = socket.getaddrinfo(
            host_argument(address.host), address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve {address}: {exc.strerror}") from None
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # [::]:80 and 0.0.0.0:80 may then be bound side by side, as a person expects.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {address}: {os.strerror(exc.errno or 0)}") from None
    host, port = sock.getsockname()[:2]
    bound = Address("tcp", host=host, port=port)
    return Listener(sock, address, str(bound))


def _create_unix(address: Address, backlog: int, mode: int | None, owner: Owner | None) -> Listener:
    """Bind a unix socket file with its mode and owner set without ever following a symlink.

    The mode comes from the umask in force at bind() (no chmod by path). The
    owner is changed through a descriptor of the file found at the path (O_PATH,
    no symlink followed) once it is seen to be a socket: a user who may write
    the directory can swap the file, but never get another file chowned.
    Until listen() a connect() is refused, so rights set before it are never late.
    """
    path = address.path
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    wanted = mode if mode is not None else DEFAULT_UNIX_MODE & ~_current_umask()
    old_umask = os.umask(0o777 & ~wanted)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {address}: {os.strerror(exc.errno or 0)}") from None
    finally:
        os.umask(old_umask)
    try:
        if owner is not None:
            _chown_socket_file(path, owner)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        os.unlink(path)
        raise BindError(f"cannot listen on {address}: {exc.strerror or os.strerror(exc.errno or 0)}") from None
    return Listener(sock, address, str(address))


def _chown_socket_file(path: str, owner: Owner) -> None:
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.EPERM, "the socket file was replaced before its owner could be set")
        os.chown(f"/proc/self/fd/{fd}", owner.uid, owner.gid)  # that inode, whatever the path holds now
    finally:
        os.close(fd)


def _current_umask() -> int:
    # Reading the umask means setting it; the master is single-threaded when it binds.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by a dead server; refuse to steal a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError(f"cannot listen on unix:{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise BindError(f"cannot listen on unix:{path}: the file exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise BindError(f"cannot listen on unix:{path}: {exc.strerror}") from None
        os.unlink(path)  # nobody listens: a stale file from a server that died
        return
    finally:
        probe.close()
    raise BindError(f"cannot listen on unix:{path}: another server is listening on it")


def inherit_listener(fd: int, name: str, configured: Address | None = None) -> Listener:
    """Wrap an already-listening descriptor handed to us (fd://N, systemd, upgrade).

    ``configured`` is the bind address that named it (fd://N), which is how the
    master matches listeners to the bind list; else the socket's own address.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"cannot use {name}: {exc.strerror}") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise BindError(f"cannot use {name}: descriptor {fd} is not a listening stream socket")
    os.set_inheritable(fd, True)
    if sock.family == socket.AF_UNIX:
        address = Address("unix", path=str(sock.getsockname()))
    else:
        host, port = sock.getsockname()[:2]
        address = Address("tcp", host=host, port=port)
    return Listener(sock, configured or address, f"{name} ({address})", owned=False)


def open_listeners(addresses: tuple[Address, ...], backlog: int, reuse_port: bool, *,
                   unix_mode: int | None = None, unix_owner: Owner | None = None) -> list[Listener]:
    """Open every bind address, closing the ones already opened if one fails."""
    listeners: list[Listener] = []
    try:
        for address in addresses:
            listeners.append(create_listener(address, backlog, reuse_port, unix_mode=unix_mode,
                                             unix_owner=unix_owner))
    except BindError:
        for listener in listeners:
            listener.close()
        raise
    set_blocking_mode(listeners)
    return listeners


def set_blocking_mode(listeners: list[Listener]) -> None:
    """Choose how workers wait, once, in the master.

    O_NONBLOCK lives on the open file description shared by every process that
    inherited the socket, so it must be decided here and never in a worker. One
    listener: blocking accept(), the kernel wakes exactly one idle worker. Several:
    non-blocking, workers wait in epoll and try each one.
    """
    blocking = len(listeners) == 1
    for listener in listeners:
        listener.sock.setblocking(blocking)


SD_LISTEN_FDS_START = 3
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listeners_from_environment(environ: dict[str, str] | os._Environ[str]) -> list[Listener] | None:
    """Listeners handed to us by systemd socket activation or by the master we upgrade from.

    Both follow systemd's convention: LISTEN_PID names us, LISTEN_FDS counts
    descriptors from 3, LISTEN_FDNAMES names them. The variables are removed so
    that workers and anything we exec do not take them for their own. None when
    nothing was handed over.
    """
    pid, count, names = (environ.pop(var, None) for var in LISTEN_VARS)
    if pid is None or count is None:
        return None
    if not pid.isdigit() or int(pid) != os.getpid():
        return None  # meant for another process (our parent, say)
    if not count.isdigit() or int(count) < 1:
        raise BindError(f"LISTEN_FDS={count!r} is not a positive number of descriptors")
    labels = names.split(":") if names else []
    listeners = []
    for offset in range(int(count)):
        fd = SD_LISTEN_FDS_START + offset
        label = labels[offset] if offset < len(labels) and labels[offset] else f"fd://{fd}"
        listeners.append(inherit_listener(fd, label))
    set_blocking_mode(listeners)
    return listeners
