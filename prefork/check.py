"""``prefork check``: would ``prefork run`` with these settings work? Without serving anything.

Each check returns a :class:`Problem` (or None) instead of raising, so that one
run reports everything wrong at once; the CLI prints them and exits with the
status of the first (config 2, app 4, bind 1).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import stat
import sys
import time
import traceback
from collections.abc import Iterator

from . import hooks, privileges
from .daemon import refuse_under_systemd
from .docs import toml_value
from .errors import EXIT_APP, EXIT_BIND, EXIT_USAGE, AppImportError, BindError, ConfigError, PreforkError
from .importer import import_app
from .inetd import find_program  # imported before the child drops privileges (its modules may be root's)
from .log import open_regular
from .pidfile import read_pid
from .record import dataclass, fields
from .reload import access_log_path, load_tls_context
from .settings import Settings
from .sockets import Address

DEFAULT_IMPORT_TIMEOUT = 30.0  # seconds, when --timeout is 0 (off)


@dataclass(frozen=True)
class Problem:
    status: int
    message: str
    in_use: bool = False  # the address is taken (by another process: or by our own running server)

    def error(self) -> PreforkError:
        """The exception ``prefork run`` would have raised (for the CLI to map to ``status``)."""
        kinds: dict[int, type[PreforkError]] = {EXIT_APP: AppImportError, EXIT_BIND: BindError}
        return kinds.get(self.status, ConfigError)(self.message)


def effective_configuration(settings: Settings, origin: dict[str, str]) -> Iterator[str]:
    """The settings as TOML lines, each with where its value came from; unset ones commented out."""
    width = max(len(name) for name in origin)
    for name, source in origin.items():
        written = toml_value(getattr(settings, name))
        line = f"{name} = {written}" if written is not None else f"# {name} (unset)"
        yield f"{line:<{width + 40}} # {source}"


# --- the app and the hooks, imported in a child ---


def check_imports(settings: Settings) -> Problem | None:
    """Import the hooks and the app in a forked child, as a real start would; None when all import.

    A child, so that an import that crashes the interpreter or hangs cannot take
    this command with it: it is killed after ``--timeout`` seconds. The child
    imports the hooks as the master would, then (unless ``--preload``) becomes
    ``--user``/``--group`` before importing the app, as a worker would.
    """
    timeout = settings.timeout or DEFAULT_IMPORT_TIMEOUT
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _import_in_child(settings, write_end)  # never returns
    os.close(write_end)
    try:
        report, timed_out = _read_until(read_end, time.monotonic() + timeout)
    finally:
        os.close(read_end)
    if timed_out:
        _kill(pid)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return Problem(EXIT_APP, f"importing app {settings.app!r} did not finish within {timeout:g}s")
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return Problem(EXIT_APP, f"importing app {settings.app!r} killed the process ({name})")
    if os.WEXITSTATUS(status) != 0:
        return Problem(os.WEXITSTATUS(status), report.decode(errors="replace").rstrip("\n"))
    return None


def _import_in_child(settings: Settings, report_fd: int) -> None:
    """In the child: import, write what went wrong to ``report_fd``, leave with its status."""
    status, report = 0, ""
    try:
        hooks.import_hooks(settings)
        identity = privileges.resolve(settings.user, settings.group)
        if identity is not None and not settings.preload:
            privileges.drop_privileges(identity)
        if settings.exec:
            find_program(settings)  # as the worker's user, which is who runs it
        else:
            import_app(settings.app or "")
    except AppImportError as exc:
        status, report = exc.exit_status, str(exc)
        if exc.show_traceback and exc.__cause__ is not None:
            report = "".join(traceback.format_exception(exc.__cause__)) + report
    except PreforkError as exc:
        status, report = exc.exit_status, str(exc)
    except BaseException as exc:  # the app's own import-time code, SystemExit included
        status, report = EXIT_APP, "".join(traceback.format_exception(exc))
    finally:
        try:
            os.write(report_fd, report.encode())
        finally:
            os._exit(status)


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything written to ``fd`` until EOF; (data, True) if the deadline came first."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return b"".join(chunks), True
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks), False
        chunks.append(data)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- binds ---


def check_bind(address: Address, reuse_port: bool, setting: str = "bind") -> Problem | None:
    """Could ``address`` be bound now? Binds (TCP) or inspects (unix, fd://) without listening."""
    what = f"{setting} {address}"
    if address.kind == "unix":
        return _check_unix(address.path, what)
    if address.kind == "fd":
        return _check_fd(address.fd, what)
    return _check_tcp(address, reuse_port, what)


def _check_tcp(address: Address, reuse_port: bool, what: str) -> Problem | None:
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Problem(EXIT_BIND, f"{what}: cannot resolve {address.host!r}: {exc.strerror}")
    family, type_, proto, _, sockaddr = infos[0]
    with socket.socket(family, type_, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the master does
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return Problem(EXIT_BIND, f"{what}: {os.strerror(exc.errno or 0)}{_bind_hint(exc, address)}",
                           in_use=exc.errno == errno.EADDRINUSE)
    return None


def _bind_hint(exc: OSError, address: Address) -> str:
    if exc.errno == errno.EACCES and address.port < 1024:
        return " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if exc.errno == errno.EADDRINUSE:
        return " (another process listens there)"
    return ""


def _check_unix(path: str, what: str) -> Problem | None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return Problem(EXIT_BIND, f"{what}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        return Problem(EXIT_BIND, f"{what}: directory {directory} is not writable")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(mode):
        return Problem(EXIT_BIND, f"{what}: the file exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return None  # a stale socket file: the server removes it when it starts
    return Problem(EXIT_BIND, f"{what}: another server is listening on it", in_use=True)


def _check_fd(fd: int, what: str) -> Problem | None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        return Problem(EXIT_BIND, f"{what}: {exc.strerror}")
    try:
        listening = sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = False
    finally:
        sock.detach()
    return None if listening else Problem(EXIT_BIND, f"{what}: not a listening stream socket")


def check_settings(settings: Settings) -> Problem | None:
    """What ``prefork run`` refuses before it starts, beyond each value's own parse."""
    if not settings.app and not settings.exec:
        return Problem(EXIT_USAGE, "no APP given (as an argument, PREFORK_APP or app = ... in the config file)")
    for name, path in (("log_file", settings.log_file), ("access_log", access_log_path(settings))):
        problem = check_log_file(path, name) if path else None
        if problem is not None:
            return problem
    try:
        load_tls_context(settings)  # the certificate files load, as at start
        privileges.check_can_switch(privileges.resolve(settings.user, settings.group))
        if settings.daemon:
            refuse_under_systemd(os.environ)
    except PreforkError as exc:
        return Problem(exc.exit_status, str(exc))
    return None


def check_log_file(path: str, setting: str = "log_file") -> Problem | None:
    """Whether a log file (the log, the access log) opens as at start (safely, never through a symlink),
    without creating it."""
    try:
        if os.path.lexists(path):
            os.close(open_regular(path, os.O_WRONLY | os.O_APPEND))
        else:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        return Problem(EXIT_USAGE, f"{setting}: cannot open {path!r}: {exc.strerror}")
    return None


def run_checks(settings: Settings) -> Iterator[tuple[str, Problem | None]]:
    """Each check's name and its problem (None: passed): settings, then app, then binds."""
    problem = check_settings(settings)
    yield "settings", problem
    if problem is None:
        where = "in the master (--preload)" if settings.preload else "as a worker would"
        what = f"program {settings.exec[0]} runs" if settings.exec else f"app {settings.app} imports"
        yield f"{what} {where}", check_imports(settings)
    running = running_server(settings)
    binds = [("bind", address, settings.reuse_port) for address in settings.bind]
    for name, address, reuse_port in binds + [(name, address, False) for name, address in other_addresses(settings)]:
        problem = check_bind(address, reuse_port, name)
        if problem is not None and problem.in_use and running is not None:
            # Checking a changed config before a reload: our own server holds the address.
            yield f"{name} {address} (in use by the running server, pid {running})", None
        else:
            yield f"{name} {address}", problem


def running_server(settings: Settings) -> int | None:
    """The pid of a live process named by the ``--pid`` file: the server this config already runs."""
    pid = read_pid(settings.pid) if settings.pid else None
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return pid


def other_addresses(settings: Settings) -> Iterator[tuple[str, Address]]:
    """Addresses the master binds besides --bind (--metrics-bind, say): any setting holding one."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name != "bind" and isinstance(value, Address) and value not in settings.bind:
            yield f.name, value
