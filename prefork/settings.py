"""The one declaration of prefork's settings.

Each field of :class:`Settings` carries its name, type, default, help and
validation. The command-line options, the ``PREFORK_*`` environment variables,
the TOML file keys and the README's reference are all generated from it.
Precedence: command line > environment > config file > defaults. The value
parsers are in ``values.py``; reading the file, the environment and the command
line (:func:`prefork.sources.load`) in ``sources.py``.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Iterator

from .access import LOOPBACK, Network, network_list
from .errors import ConfigError
from .log import LOG_FORMATS
from .record import Field, dataclass, fields
from .sockets import Address, Owner, parse_address
from .values import (
    Meta,
    app_spec,
    bind_list,
    boolean,
    choice,
    command_line,
    env_assignments,
    file_mode,
    group_name,
    hook_spec,
    integer,
    log_level,
    optional_address,
    optional_text,
    owner,
    path_list,
    positive_seconds,
    readable_file,
    seconds,
    setting,
    text,
    trusted_networks,
    umask_value,
    user_name,
)


@dataclass(frozen=True)
class Settings:
    """Every setting of a running server; immutable, replaced whole on reload."""

    app: str | None = setting(
        None, help="The handler to serve, as module:attribute or module:factory().",
        parse=app_spec, metavar="APP", cli=False,
    )
    config: str | None = setting(
        None, help="Read settings from this TOML file (re-read on HUP).",
        parse=optional_text, metavar="FILE", short="-c",
    )
    workers: int = setting(
        factory=lambda: os.cpu_count() or 1, help="Number of worker processes.",
        parse=integer(1, 4096), metavar="N", short="-w", shown_default="number of CPUs",
    )
    bind: tuple[Address, ...] = setting(
        (parse_address("127.0.0.1:8000"),),
        help="Listen on HOST:PORT, :PORT (every IPv4 interface), [IPV6]:PORT, unix:PATH or fd://N (repeatable).",
        parse=bind_list, metavar="ADDR", short="-b", multiple=True,
    )
    backlog: int = setting(2048, help="The listen() queue length.", parse=integer(1, 65535), metavar="N")
    reuse_port: bool = setting(
        False, help="Set SO_REUSEPORT: one listening socket per worker slot, balanced by the kernel.",
        parse=boolean, flag=True,
    )
    pid: str | None = setting(
        None, help="Write the master's pid to FILE (atomically); removed at exit.",
        parse=optional_text, metavar="FILE",
    )
    graceful_timeout: float = setting(
        30.0, help="Seconds a graceful stop (after any --shutdown-delay) or a retiring worker may take "
        "before being killed; a stop then closes what is still queued.",
        parse=seconds, metavar="SECONDS",
    )
    shutdown_delay: float = setting(
        0.0, help="On TERM, keep serving normally this long before the graceful stop (a load balancer "
        "stops sending meanwhile); a second TERM starts the stop at once.",
        parse=seconds, metavar="SECONDS",
    )
    timeout: float = setting(
        None, help="Kill and replace a worker busy on one connection longer than this (0 = off); "
        "with --exec, kill the program running longer than this instead.",
        parse=seconds, metavar="SECONDS", shown_default="30; 0 (no limit) with --exec",
    )
    reload: bool = setting(
        False, help="Development: reload (HUP) when a Python file under the app's directory (--chdir, else the "
        "current one; site-packages excluded) or a --reload-extra-file changes (needs the dev extra: "
        "watchfiles); not with --preload.", parse=boolean, flag=True, start_only=True,
    )
    reload_extra_file: tuple[str, ...] = setting(
        (), help="With --reload: watch this file too (repeatable).", parse=path_list, metavar="FILE",
        multiple=True, start_only=True,
    )
    reload_strategy: str = setting(
        "generation", help="HUP: generation (boot all new workers beside the old, then retire the old: 2N at "
        "the peak) or rolling (replace --reload-batch workers at a time: N + K at most).",
        parse=choice("generation", "rolling"), metavar="STRATEGY",
    )
    reload_batch: int = setting(
        1, help="Rolling reload: workers replaced at a time (K).", parse=integer(1, 4096), metavar="K",
    )
    boot_timeout: float = setting(
        60.0, help="Kill (and retry) a worker still booting, importing the app, after this long (0 = no limit).",
        parse=seconds, metavar="SECONDS",
    )
    max_requests: int = setting(
        0, help="Recycle a worker after it has served this many connections (0 = never).",
        parse=integer(0, 1_000_000_000), metavar="N",
    )
    max_requests_jitter: int = setting(
        0, help="Add random(0..J) to --max-requests so workers do not recycle together.",
        parse=integer(0, 1_000_000_000), metavar="J",
    )
    max_worker_memory: int = setting(
        0, help="Recycle a worker whose memory (USS, else RSS) exceeds this many MB (0 = off).",
        parse=integer(0, 1_048_576), metavar="MB",
    )
    log_level: str = setting("info", help="debug, info, warning, error or critical.", parse=log_level, metavar="LEVEL")
    log_file: str | None = setting(
        None, help="Log to FILE instead of stderr; reopened on USR1 and HUP (a HUP also switches to a new FILE).",
        parse=optional_text, metavar="FILE",
    )
    log_format: str = setting(
        "text", help="text or json: the master's and workers' log and the --wsgi access log as lines for "
        "a person, or one JSON object per line.", parse=choice(*LOG_FORMATS), metavar="FORMAT", start_only=True,
    )
    name: str | None = setting(
        None, help="The name shown in process titles (default: the APP string).",
        parse=optional_text, metavar="NAME",
    )
    chdir: str | None = setting(
        None, help="Change to DIR before loading the app, and put DIR on sys.path.",
        parse=optional_text, metavar="DIR", start_only=True,
    )
    preload: bool = setting(
        False, help="Import the app once in the master before forking (shared copy-on-write; HUP then "
        "cannot reload app code, USR2 can).", parse=boolean, flag=True, start_only=True,
    )
    user: str | None = setting(
        None, help="Workers run as this user (name or uid) once the master has bound; "
        "supplementary groups from initgroups.", parse=user_name, metavar="USER", short="-u",
    )
    group: str | None = setting(
        None, help="Workers run with this group (name or gid); default: the --user's primary group.",
        parse=group_name, metavar="GROUP", short="-g",
    )
    umask: int | None = setting(
        None, help="Set the process umask (octal, e.g. 027) before binding; also governs unix socket modes.",
        parse=umask_value, metavar="MASK", start_only=True,
    )
    daemon: bool = setting(
        False, help="Detach from the terminal (double fork, setsid, stdio to /dev/null); not under systemd.",
        parse=boolean, flag=True, start_only=True,
    )
    on_starting: str | None = setting(
        None, help="Hook on_starting(server): in the master, before it binds.",
        parse=hook_spec, metavar="MODULE:FUNC",
    )
    when_ready: str | None = setting(
        None, help="Hook when_ready(server): in the master, once it listens, before the first fork.",
        parse=hook_spec, metavar="MODULE:FUNC",
    )
    pre_fork: str | None = setting(
        None, help="Hook pre_fork(server, worker): in the master just before forking (worker.pid is 0 "
        "until forked).", parse=hook_spec, metavar="MODULE:FUNC",
    )
    post_fork: str | None = setting(
        None, help="Hook post_fork(server, worker): in the new worker, before privileges drop and the app "
        "loads; raising fails the boot.", parse=hook_spec, metavar="MODULE:FUNC",
    )
    worker_exit: str | None = setting(
        None, help="Hook worker_exit(server, worker): in the master after reaping a worker (worker.exit_status "
        "as os.waitpid gave it).", parse=hook_spec, metavar="MODULE:FUNC",
    )
    on_reload: str | None = setting(
        None, help="Hook on_reload(server): in the master on HUP, once the new settings are accepted.",
        parse=hook_spec, metavar="MODULE:FUNC",
    )
    on_exit: str | None = setting(
        None, help="Hook on_exit(server): in the master just before it exits.",
        parse=hook_spec, metavar="MODULE:FUNC",
    )
    threads: int = setting(
        1, help="Threads per worker, each accepting and serving connections itself.",
        parse=integer(1, 1024), metavar="N",
    )
    metrics_bind: Address | None = setting(
        None, help="Serve Prometheus metrics at http://ADDR/metrics and health checks at /livez, /readyz, from the "
        "master (set at start).",
        parse=optional_address, metavar="ADDR",
    )
    max_workers: int = setting(
        0, help="Adaptive pool: grow up to N workers under load (0 = a fixed pool of --workers).",
        parse=integer(0, 4096), metavar="N",
    )
    min_workers: int = setting(
        1, help="Adaptive pool: never fewer than N workers.", parse=integer(1, 4096), metavar="N",
    )
    spare: int = setting(
        1, help="Adaptive pool: keep N idle workers ready; fork more when fewer are idle.",
        parse=integer(1, 4096), metavar="N",
    )
    idle_retire: float = setting(
        10.0, help="Adaptive pool: retire surplus idle workers once they have been surplus this long.",
        parse=seconds, metavar="SECONDS",
    )
    # --- who may connect, and what a connection may do (connection.py) ---
    allow: tuple[Network, ...] = setting(
        (), help="Serve only clients in this network (CIDR or address; repeatable; IPv4 and IPv6).",
        parse=network_list, metavar="CIDR", multiple=True, shown_default="any address",
    )
    deny: tuple[Network, ...] = setting(
        (), help="Refuse clients in this network (repeatable); wins over --allow.",
        parse=network_list, metavar="CIDR", multiple=True, shown_default="none",
    )
    max_per_source: int = setting(
        0, help="Serve at most N connections at once from one client address, across workers (0 = no limit).",
        parse=integer(0, 1_000_000), metavar="N",
    )
    certfile: str | None = setting(
        None, help="Serve TLS with this PEM certificate chain (re-read on HUP).",
        parse=readable_file, metavar="FILE",
    )
    keyfile: str | None = setting(
        None, help="The certificate's private key, when it is not in --certfile.", parse=readable_file, metavar="FILE",
    )
    ca_certs: str | None = setting(
        None, help="Ask clients for a certificate signed by these CAs (PEM); the handler sees it.",
        parse=readable_file, metavar="FILE",
    )
    verify_client: bool = setting(
        False, help="Require a valid client certificate (needs --ca-certs).", parse=boolean, flag=True,
    )
    proxy_protocol: bool = setting(
        False, help="Read a PROXY protocol v1/v2 header first: the handler gets the real client address.",
        parse=boolean, flag=True,
    )
    proxy_allow: tuple[Network, ...] = setting(
        LOOPBACK, help="Load balancers trusted to send PROXY headers (CIDR, repeatable); others are closed.",
        parse=network_list, metavar="CIDR", multiple=True,
    )
    handshake_timeout: float = setting(
        10.0, help="Seconds from accept() for the PROXY header and TLS handshake to complete.",
        parse=positive_seconds, metavar="SECONDS",
    )
    idle_timeout: float = setting(
        0.0, help="Socket timeout of the handler's connection: recv/send fail after this long idle (0 = off).",
        parse=seconds, metavar="SECONDS",
    )
    unix_mode: int | None = setting(
        None, help="Mode of unix socket files (octal).", parse=file_mode, metavar="MODE",
        shown_default="660 less the umask's bits",
    )
    unix_owner: Owner | None = setting(
        None, help="Owner of unix socket files, USER[:GROUP] (names or ids).", parse=owner, metavar="USER[:GROUP]",
    )
    # --- HTTP: --wsgi serves APP as a WSGI application (prefork/http/) ---
    wsgi: bool = setting(
        False, help="APP is a WSGI application: serve it over HTTP/1.1 (needs the http extra: httptools).",
        parse=boolean, flag=True,
    )
    keepalive: float = setting(
        5.0, help="HTTP: close a kept-alive connection idle this long (0 = no keep-alive).",
        parse=seconds, metavar="SECONDS",
    )
    keepalive_max: int = setting(
        100, help="HTTP: most idle kept-alive connections a worker (each --threads thread) keeps waiting in its "
        "epoll set; over it, the longest idle is closed.", parse=integer(1, 65536), metavar="N",
    )
    limit_request_line: int = setting(
        4094, help="HTTP: longest request line, in bytes; longer is answered 414 (0 = no limit).",
        parse=integer(0, 1_048_576), metavar="BYTES",
    )
    limit_request_fields: int = setting(
        100, help="HTTP: most header fields in a request; more is answered 431 (0 = no limit).",
        parse=integer(0, 32768), metavar="N",
    )
    limit_request_field_size: int = setting(
        8190, help="HTTP: largest header field (name and value), in bytes; larger is answered 431 (0 = no limit).",
        parse=integer(0, 1_048_576), metavar="BYTES",
    )
    access_log: str | None = setting(
        None, help="HTTP: write an access log line per request to FILE (- for stdout).",
        parse=optional_text, metavar="FILE",
    )
    access_log_format: str = setting(
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
        help="HTTP: access log line, with gunicorn's %(atom)s names (default: Apache combined).",
        parse=text, metavar="FORMAT",
    )
    forwarded_allow_ips: tuple[Network, ...] = setting(
        (ipaddress.ip_network("127.0.0.1/32"),), help="HTTP: proxies whose X-Forwarded-For/-Proto/-Prefix "
        "headers are trusted (CIDR, repeatable; * for any); unix socket peers always are.",
        parse=trusted_networks, metavar="CIDR", multiple=True,
    )
    root_path: str = setting(
        "", help="HTTP: SCRIPT_NAME, the path the application is mounted at behind a proxy (e.g. /app).",
        parse=text, metavar="PATH",
    )

    # --- inetd mode: --exec runs a program per connection on its socket (inetd.py) ---
    exec: tuple[str, ...] = setting(
        (), help="Exec (inetd) mode: run PROGRAM for each connection, the socket as its stdin and stdout, "
        "in place of APP (in TOML a list: exec = [\"git\", \"daemon\", \"--inetd\"]).",
        parse=command_line, metavar="PROGRAM [ARGS...]", cli=False, spelt="--exec -- PROGRAM [ARGS...]",
        shown_default="none",
    )
    exec_env: tuple[str, ...] = setting(
        (), help="Exec mode: add KEY=VALUE to the program's environment (repeatable).",
        parse=env_assignments, metavar="KEY=VALUE", multiple=True, shown_default="none",
    )
    exec_stderr: str = setting(
        "log", help="Exec mode: the program's stderr is prefork's log (log) or the connection (conn).",
        parse=choice("log", "conn"), metavar="log|conn",
    )

    def __post_init__(self) -> None:
        if self.timeout is None:  # in exec mode --timeout bounds the program, and sessions may last
            object.__setattr__(self, "timeout", 0.0 if self.exec else 30.0)
        check_connection_settings(self)
        check_exec_settings(self)

    @property
    def served(self) -> str:
        """What the workers serve, for the log: ``app M:A`` or ``exec PROGRAM ARGS``."""
        return f"exec {shlex.join(self.exec)}" if self.exec else f"app {self.app}"

    @property
    def worker_timeout(self) -> float:
        """How long the master lets a worker be busy on one connection (0 = forever).

        With --exec the worker bounds its program itself (inetd.py); the master
        steps in only if that failed, once the program's kill grace is over too.
        """
        if self.exec and self.timeout:
            return self.timeout + EXEC_BACKSTOP
        return self.timeout

    @property
    def proc_name(self) -> str:
        return self.name or self.app or (os.path.basename(self.exec[0]) if self.exec else "prefork")


def check_connection_settings(settings: Settings) -> None:
    """Settings that only make sense together (the TLS files are loaded once per value: tls.load_context)."""
    if settings.keyfile and not settings.certfile:
        raise ConfigError("keyfile: given without certfile")
    if settings.ca_certs and not settings.certfile:
        raise ConfigError("ca_certs: client certificates need TLS (certfile)")
    if settings.verify_client and not settings.ca_certs:
        raise ConfigError("verify_client: needs ca_certs (the CAs that sign client certificates)")
    if settings.reload and settings.preload:
        raise ConfigError("reload: cannot be used with preload (the app is imported once, in the master)")
    if settings.max_per_source and settings.threads > 1:
        # The scoreboard shows one connection per worker, which is what the limit counts.
        raise ConfigError("max_per_source: counts one connection per worker; it cannot be used with threads > 1")


EXEC_BACKSTOP = 10.0  # seconds past --timeout before the master kills an --exec worker itself


def check_exec_settings(settings: Settings) -> None:
    """What exec mode cannot be combined with."""
    if not settings.exec:
        return
    if settings.app:
        raise ConfigError("exec: runs a program in place of an APP; give one or the other")
    if settings.wsgi:
        raise ConfigError("exec: a program speaks its own protocol; it cannot be used with wsgi")
    if settings.preload:
        raise ConfigError("preload: there is no app to preload in exec mode")
    if settings.threads > 1:
        raise ConfigError("exec: one program per worker at a time; use workers, not threads, for more instances")
    if settings.idle_timeout:
        raise ConfigError("idle_timeout: the program holds the socket itself; in exec mode use timeout")


FIELDS = {f.name: f for f in fields(Settings)}  # each setting's field by name


def declared() -> Iterator[tuple[Field, Meta]]:
    """Each setting's field and metadata, in declaration order."""
    for f in fields(Settings):
        yield f, f.metadata["meta"]


def start_only_changes(old: Settings, new: Settings) -> list[str]:
    """Settings that differ in ``new`` but only apply when the master starts (a reload keeps them)."""
    return [f.name for f, meta in declared() if meta.start_only and getattr(old, f.name) != getattr(new, f.name)]


def names() -> list[str]:
    return list(FIELDS)


def default_text(f: Field, meta: Meta) -> str:
    """The default as a person reads it (docs and --help)."""
    if meta.shown_default:
        return meta.shown_default
    value = f.default
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
