"""The one declaration of prefork's settings.

Each field of :class:`Settings` carries its name, type, default, help and
validation. The command-line options, the ``PREFORK_*`` environment variables,
the TOML file keys and the README's reference are all generated from it.
Precedence: command line > environment > config file > defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import privileges
from .access import LOOPBACK, Network, network_list
from .errors import ConfigError
from .sockets import Address, Owner, parse_address, parse_owner
from .tls import make_context

ENV_PREFIX = "PREFORK_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

Parser = Callable[[object], Any]


@dataclass(frozen=True)
class Meta:
    """How one setting is spelt, parsed and documented."""

    help: str
    parse: Parser
    metavar: str = ""
    short: str = ""
    flag: bool = False  # a boolean switch on the command line
    multiple: bool = False  # repeatable on the command line; a list in TOML; commas in env
    cli: bool = True  # False for the APP argument, which is positional
    shown_default: str = ""  # for defaults computed at run time (the CPU count)
    start_only: bool = False  # applied when the master starts; a reload (HUP) cannot change it


def setting(default: Any = None, *, factory: Callable[[], Any] | None = None, **meta: Any) -> Any:
    """Declare a field of :class:`Settings` with its :class:`Meta`."""
    md = {"meta": Meta(**meta)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


# --- parsers: each takes a value from any source (str from CLI/env, native from TOML) ---


def integer(minimum: int) -> Parser:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ConfigError(f"{value!r} is not an integer")
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{value!r} is not an integer (expected an integer >= {minimum})")
        if value < minimum:
            raise ConfigError(f"{value!r} is too small (expected an integer >= {minimum})")
        return value

    return parse


def seconds(value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{value!r} is not a number of seconds")
    if value < 0:
        raise ConfigError(f"{value!r} is negative (expected seconds >= 0)")
    return float(value)


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{value!r} is not a boolean (expected true or false)")


def text(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not a string")
    return value


def optional_text(value: object) -> str | None:
    return text(value) or None


def log_level(value: object) -> str:
    level = text(value).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{value!r} is not a log level (expected one of {', '.join(LOG_LEVELS)})")
    return level


def _items(value: object) -> list[object]:
    if isinstance(value, str):
        return [part for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"{value!r} is not a list")


def bind_list(value: object) -> tuple[Address, ...]:
    addresses = tuple(parse_address(text(item)) for item in _items(value))
    if not addresses:
        raise ConfigError("no address given (expected at least one)")
    return addresses


def optional_address(value: object) -> Address | None:
    spec = text(value).strip()
    return parse_address(spec) if spec else None


def app_spec(value: object) -> str | None:
    spec = text(value).strip()
    if not spec:
        return None
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{spec!r} is not of the form module:attribute")
    return spec


def hook_spec(value: object) -> str | None:
    """``module:function`` naming a hook; imported when the master starts (see hooks.py)."""
    spec = text(value).strip()
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    if not module or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ConfigError(f"{spec!r} is not of the form module:function")
    return spec


def user_name(value: object) -> str | None:
    """A user name or numeric uid; a name must exist on this system."""
    name = str(value).strip() if isinstance(value, int) and not isinstance(value, bool) else text(value).strip()
    if name:
        privileges.lookup_user(name)
    return name or None


def group_name(value: object) -> str | None:
    """A group name or numeric gid; a name must exist on this system."""
    name = str(value).strip() if isinstance(value, int) and not isinstance(value, bool) else text(value).strip()
    if name:
        privileges.lookup_group(name)
    return name or None


class FileMode(int):
    """An int shown in octal (``0o027``), as modes and umasks are written."""

    def __repr__(self) -> str:
        return f"0o{int(self):03o}"

    __str__ = __repr__


def octal_mode(what: str, example: str) -> Parser:
    """A parser of octal modes: ``"660"`` or ``"0o660"`` in text, ``0o660`` in TOML."""

    def parse(value: object) -> FileMode | None:
        if isinstance(value, str):
            digits = value.strip().lower().removeprefix("0o")
            if not digits:
                return None
            try:
                value = int(digits, 8)
            except ValueError:
                raise ConfigError(f"{value!r} is not an octal {what} (expected e.g. {example})") from None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
            hint = f' (in TOML write 0o{example} or "{example}")' if isinstance(value, int) else ""
            raise ConfigError(f"{value!r} is not a {what} (expected an octal number 000-777){hint}")
        return FileMode(value)

    return parse


umask_value = octal_mode("umask", "027")
file_mode = octal_mode("file mode", "660")


def readable_file(value: object) -> str | None:
    """A path that must name a file we can read now (certificates, keys)."""
    path = text(value).strip()
    if not path:
        return None
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{path!r} is not a readable file")
    return path


def owner(value: object) -> Owner | None:
    spec = text(value).strip()
    return parse_owner(spec) if spec else None


def trusted_networks(value: object) -> tuple[Network, ...]:
    """--forwarded-allow-ips: networks, or ``*`` for every address."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (list, tuple)) and any(isinstance(item, str) and item.strip() == "*" for item in items):
        return network_list("0.0.0.0/0,::/0")
    return network_list(value)


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
        parse=integer(1), metavar="N", short="-w", shown_default="number of CPUs",
    )
    bind: tuple[Address, ...] = setting(
        (parse_address("127.0.0.1:8000"),),
        help="Listen on HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N (repeatable).",
        parse=bind_list, metavar="ADDR", short="-b", multiple=True,
    )
    backlog: int = setting(2048, help="The listen() queue length.", parse=integer(1), metavar="N")
    reuse_port: bool = setting(
        False, help="Set SO_REUSEPORT: one listening socket per worker slot, balanced by the kernel.",
        parse=boolean, flag=True,
    )
    pid: str | None = setting(
        None, help="Write the master's pid to FILE (atomically); removed at exit.",
        parse=optional_text, metavar="FILE",
    )
    graceful_timeout: float = setting(
        30.0, help="Seconds a graceful stop waits for busy workers before killing them.",
        parse=seconds, metavar="SECONDS",
    )
    timeout: float = setting(
        30.0, help="Kill and replace a worker busy on one connection longer than this (0 = off).",
        parse=seconds, metavar="SECONDS",
    )
    max_requests: int = setting(
        0, help="Recycle a worker after it has served this many connections (0 = never).",
        parse=integer(0), metavar="N",
    )
    max_requests_jitter: int = setting(
        0, help="Add random(0..J) to --max-requests so workers do not recycle together.",
        parse=integer(0), metavar="J",
    )
    max_worker_memory: int = setting(
        0, help="Recycle a worker whose memory (USS, else RSS) exceeds this many MB (0 = off).",
        parse=integer(0), metavar="MB",
    )
    log_level: str = setting("info", help="debug, info, warning, error or critical.", parse=log_level, metavar="LEVEL")
    log_file: str | None = setting(
        None, help="Log to FILE instead of stderr; reopened on USR1 and HUP (a HUP also switches to a new FILE).",
        parse=optional_text, metavar="FILE",
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
        parse=integer(1), metavar="N",
    )
    metrics_bind: Address | None = setting(  # noqa: RUF009 - Address is frozen
        None, help="Serve Prometheus metrics at http://ADDR/metrics from the master (set at start).",
        parse=optional_address, metavar="ADDR",
    )
    max_workers: int = setting(
        0, help="Adaptive pool: grow up to N workers under load (0 = a fixed pool of --workers).",
        parse=integer(0), metavar="N",
    )
    min_workers: int = setting(
        1, help="Adaptive pool: never fewer than N workers.", parse=integer(1), metavar="N",
    )
    spare: int = setting(
        1, help="Adaptive pool: keep N idle workers ready; fork more when fewer are idle.",
        parse=integer(1), metavar="N",
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
        parse=integer(0), metavar="N",
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
        parse=seconds, metavar="SECONDS",
    )
    idle_timeout: float = setting(
        0.0, help="Socket timeout of the handler's connection: recv/send fail after this long idle (0 = off).",
        parse=seconds, metavar="SECONDS",
    )
    unix_mode: int | None = setting(
        None, help="Mode of unix socket files (octal).", parse=file_mode, metavar="MODE",
        shown_default="660 less the umask's bits",
    )
    unix_owner: Owner | None = setting(  # noqa: RUF009 - Owner is frozen
        None, help="Owner of unix socket files, USER[:GROUP] (names or ids).", parse=owner, metavar="USER[:GROUP]",
    )
    # --- HTTP: --wsgi serves APP as a WSGI application (prefork/http/) ---
    wsgi: bool = setting(
        False, help="APP is a WSGI application: serve it over HTTP/1.1 (needs the http extra: httptools).",
        parse=boolean, flag=True,
    )
    keepalive: float = setting(
        5.0, help="HTTP: close a kept-alive connection idle this long (0 = no keep-alive); sooner when "
        "other connections wait.", parse=seconds, metavar="SECONDS",
    )
    limit_request_line: int = setting(
        4094, help="HTTP: longest request line, in bytes; longer is answered 414 (0 = no limit).",
        parse=integer(0), metavar="BYTES",
    )
    limit_request_fields: int = setting(
        100, help="HTTP: most header fields in a request; more is answered 431 (0 = no limit).",
        parse=integer(0), metavar="N",
    )
    limit_request_field_size: int = setting(
        8190, help="HTTP: largest header field (name and value), in bytes; larger is answered 431 (0 = no limit).",
        parse=integer(0), metavar="BYTES",
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

    def __post_init__(self) -> None:
        check_connection_settings(self)

    @property
    def proc_name(self) -> str:
        return self.name or self.app or "prefork"


def check_connection_settings(settings: Settings) -> None:
    """Settings that only make sense together; and the TLS files must load (at start, on HUP)."""
    if settings.keyfile and not settings.certfile:
        raise ConfigError("keyfile: given without certfile")
    if settings.ca_certs and not settings.certfile:
        raise ConfigError("ca_certs: client certificates need TLS (certfile)")
    if settings.verify_client and not settings.ca_certs:
        raise ConfigError("verify_client: needs ca_certs (the CAs that sign client certificates)")
    if settings.max_per_source and settings.threads > 1:
        # The scoreboard shows one connection per worker, which is what the limit counts.
        raise ConfigError("max_per_source: counts one connection per worker; it cannot be used with threads > 1")
    if settings.certfile:
        make_context(settings.certfile, settings.keyfile, settings.ca_certs, settings.verify_client)


def declared() -> Iterator[tuple[dataclasses.Field[Any], Meta]]:
    """Each setting's field and metadata, in declaration order."""
    for f in dataclasses.fields(Settings):
        yield f, f.metadata["meta"]


def start_only_changes(old: Settings, new: Settings) -> list[str]:
    """Settings that differ in ``new`` but only apply when the master starts (a reload keeps them)."""
    return [f.name for f, meta in declared() if meta.start_only and getattr(old, f.name) != getattr(new, f.name)]


def _names() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings)]


def default_text(f: dataclasses.Field[Any], meta: Meta) -> str:
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


def _unknown(key: str, where: str, spell: Callable[[str], str] = repr) -> ConfigError:
    """An unknown setting, with the closest declared one as a suggestion."""
    close = difflib.get_close_matches(key, [name for name in _names() if name != "config"], n=1)
    hint = f" (did you mean {spell(close[0])}?)" if close else ""
    return ConfigError(f"{where}: unknown setting {spell(key)}{hint}")


def _parse(name: str, value: object, where: str) -> Any:
    meta: Meta = Settings.__dataclass_fields__[name].metadata["meta"]
    try:
        return meta.parse(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {name}: {exc}") from None


def _key_line(source: str, key: str) -> int | None:
    """The line where ``key`` is assigned (or opens a table), for pointing at the mistake."""
    pattern = rf"^[ \t]*(?:\[+[ \t]*)?[\"']?{re.escape(key)}[\"']?[ \t]*[=\].]"
    match = re.search(pattern, source, re.MULTILINE)
    return source.count("\n", 0, match.start()) + 1 if match else None


def _toml_error(path: str, source: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    """``FILE, line L, column C: invalid TOML: what`` from tomllib's message."""
    message = str(exc)
    match = re.search(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$", message)
    if match is None:
        return ConfigError(f"{path}: invalid TOML: {message}")
    if match[1]:
        line, column = int(match[1]), int(match[2])
    else:  # the file ended in the middle of something: point at its end
        lines = source.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    return ConfigError(f"{path}, line {line}, column {column}: invalid TOML: {message[: match.start()]}")


def _read_toml(path: str) -> tuple[dict[str, Any], str]:
    """The parsed file and its text; ConfigError naming the file, line and column."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}, line {line}: invalid TOML: the file is not UTF-8 text") from None
    try:
        return tomllib.loads(source), source
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, source, exc) from None


def read_file(path: str) -> dict[str, Any]:
    """Parse a TOML config file into setting values, naming the file and line on any error."""
    data, source = _read_toml(path)
    values: dict[str, Any] = {}
    for key, value in data.items():
        line = _key_line(source, key)
        where = f"{path}, line {line}" if line else path
        if key == "config":
            raise ConfigError(f"{where}: 'config' cannot be set in a config file (use -c or PREFORK_CONFIG)")
        if key not in Settings.__dataclass_fields__ and isinstance(value, dict):
            raise ConfigError(f"{where}: unknown table [{key}] (settings are top-level keys, before any table)")
        if key not in Settings.__dataclass_fields__:
            raise _unknown(key, where)
        values[key] = _parse(key, value, where)
    return values


def env_var(name: str) -> str:
    """The environment variable that sets ``name``."""
    return ENV_PREFIX + name.upper()


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Setting values from ``PREFORK_<NAME>`` variables; unknown ones are errors."""
    values: dict[str, Any] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in Settings.__dataclass_fields__:
            raise _unknown(key, "environment", spell=env_var)
        values[key] = _parse(key, value, f"environment variable {var}")
    return values


def load(cli: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[Settings, dict[str, str]]:
    """Build the Settings from defaults < file < env < CLI, and where each value came from.

    ``cli`` holds only the options given on the command line, already parsed.
    The config file's path is made absolute, so that a reload after ``--chdir``
    reads the same file (reload with ``dict(cli, config=settings.config)``).
    """
    env = read_environment(environ)
    config_path = cli.get("config") or env.get("config")
    from_file = read_file(config_path) if config_path else {}
    values: dict[str, Any] = {}
    origin: dict[str, str] = {name: "default" for name in _names()}
    layers: list[tuple[Callable[[str], str], Mapping[str, Any]]] = [
        (lambda key: f"file {config_path}", from_file),
        (lambda key: f"env {env_var(key)}", env),
        (lambda key: "command line", cli),
    ]
    for source, layer in layers:
        for key, value in layer.items():
            values[key] = value
            origin[key] = source(key)
    if config_path:
        values["config"] = os.path.abspath(config_path)
    return Settings(**values), origin
