"""The value parsers of settings, and how a setting is declared (:func:`setting`, :class:`Meta`).

Each parser takes what a person wrote (a TOML value, an environment variable's
text, a command-line option) and returns the setting's value, or raises a
ConfigError saying what is wrong with it; the caller adds where it was written.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from . import privileges
from .access import Network, network_list
from .errors import ConfigError
from .record import dataclass, field
from .sockets import Address, Owner, parse_address, parse_owner

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
    spelt: str = ""  # how the command line spells a setting that is not an option (exec)
    shown_default: str = ""  # for defaults computed at run time (the CPU count)
    start_only: bool = False  # applied when the master starts; a reload (HUP) cannot change it

    @property
    def bounds(self) -> str:
        """``0 to 86400`` for a count, size or duration (:class:`Number`); empty for other settings."""
        return self.parse.bounds if isinstance(self.parse, Number) else ""


def setting(default: Any = None, *, factory: Callable[[], Any] | None = None, **meta: Any) -> Any:
    """Declare a field of :class:`Settings` with its :class:`Meta`."""
    md = {"meta": Meta(**meta)}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


# --- parsers: each takes a value from any source (str from CLI/env, native from TOML) ---


DAY = 86400  # the longest duration a setting takes, in seconds (0 turns a timeout off)
INTEGER_TEXT = re.compile(r"\s*[+-]?[0-9]{1,30}\s*")  # longer is out of any range


@dataclass(frozen=True)
class Number:
    """A parser of a count, size or duration with its bounds: the one place they are declared.

    Infinity, NaN, a negative or a value beyond ``maximum`` is refused; the docs and
    ``--help`` show :attr:`bounds`.
    """

    minimum: int | float  # a float only for a duration that must not be 0 (--handshake-timeout)
    maximum: int
    unit: str = ""  # "seconds" for a duration (a float); "" for a count (an int)

    @property
    def bounds(self) -> str:
        return f"{self.minimum} to {self.maximum}"

    def __call__(self, value: object) -> Any:
        kind = "a number of seconds" if self.unit else "an integer"
        expected = f"expected {self.unit or 'an integer'} from {self.bounds}"
        number = _number(value, real=bool(self.unit))
        if number is None or number != number:  # NaN
            raise ConfigError(f"{value!r} is not {kind} ({expected})")
        if number < self.minimum:
            raise ConfigError(f"{number!r} is too small ({expected})")
        if number > self.maximum:  # infinity too
            raise ConfigError(f"{number!r} is too large ({expected})")
        return float(number) if self.unit else number


def _number(value: object, real: bool) -> int | float | None:
    """``value`` (TOML's int or float, or text) as a number; None if it is not one of the kind."""
    if isinstance(value, str):
        if INTEGER_TEXT.fullmatch(value):
            return int(value)
        if not real:
            return None
        try:
            return float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not real):
        return None
    return value


def integer(minimum: int, maximum: int) -> Number:
    return Number(minimum, maximum)


seconds = Number(0, DAY, "seconds")
# A deadline that cannot be "off": 0 would close every connection before its PROXY header or TLS handshake.
positive_seconds = Number(0.1, DAY, "seconds")


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


def path_list(value: object) -> tuple[str, ...]:
    """File names: a TOML list, or comma-separated (environment), or one per option."""
    return tuple(text(item).strip() for item in _items(value))


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
    """An int shown in octal (``0o027``), as modes and umasks are written; a TOML integer written in octal."""

    def __repr__(self) -> str:
        return f"0o{int(self):03o}"

    __str__ = __repr__


def octal_mode(what: str, example: str) -> Parser:
    """A parser of octal modes: ``"660"`` or ``"0o660"`` in text, ``0o660`` in TOML (a FileMode).

    A plain int is a TOML integer written in decimal (``umask = 77``): refused,
    since a person who writes a mode means octal.
    """

    def parse(value: object) -> FileMode | None:
        if isinstance(value, str):
            digits = value.strip().lower().removeprefix("0o")
            if not digits:
                return None
            try:
                value = FileMode(int(digits, 8))
            except ValueError:
                raise ConfigError(f"{value!r} is not an octal {what} (expected e.g. {example})") from None
        if isinstance(value, int) and not isinstance(value, (bool, FileMode)):
            shown = str(value) if re.fullmatch("[0-7]{1,3}", str(value)) else example
            raise ConfigError(f'{value} is a decimal integer (write an octal {what}: 0o{shown} or "{shown}")')
        if not isinstance(value, FileMode) or not 0 <= value <= 0o777:
            raise ConfigError(f"{value!r} is not a {what} (expected an octal number 000-777)")
        return value

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


def command_line(value: object) -> tuple[str, ...]:
    """A program and its arguments: a list (TOML, the command line) or one string split as a shell would."""
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"{value!r} is not a command line: {exc}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{value!r} is not a command line (expected a list of strings)")
    if value and not value[0]:
        raise ConfigError("the program name is empty")
    return tuple(value)


def env_assignments(value: object) -> tuple[str, ...]:
    """``KEY=VALUE`` items, each KEY a valid environment variable name."""
    items = tuple(text(item) for item in _items(value))
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{item!r} is not of the form KEY=VALUE")
    return items


def choice(*allowed: str) -> Parser:
    def parse(value: object) -> str:
        chosen = text(value).strip().lower()
        if chosen not in allowed:
            raise ConfigError(f"{value!r} is not one of {', '.join(allowed)}")
        return chosen

    return parse


def trusted_networks(value: object) -> tuple[Network, ...]:
    """--forwarded-allow-ips: networks, or ``*`` for every address."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (list, tuple)) and any(isinstance(item, str) and item.strip() == "*" for item in items):
        return network_list("0.0.0.0/0,::/0")
    return network_list(value)
