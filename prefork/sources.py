"""Where settings come from: the TOML file, the ``PREFORK_*`` environment, the command line.

:func:`load` layers them (defaults < file < environment < command line) into one
:class:`~prefork.settings.Settings` value; every error names the file and line,
or the variable, and suggests the closest setting name for a misspelt one.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .settings import FIELDS, Settings, names
from .values import FileMode, Meta

if TYPE_CHECKING:
    import tomllib

ENV_PREFIX = "PREFORK_"


def _closest(key: str) -> str | None:
    """The declared setting ``key`` is most likely a misspelling of, if any."""
    import difflib  # only for a mistake: a server that starts does not load it

    close = difflib.get_close_matches(key, [name for name in names() if name != "config"], n=1)
    return close[0] if close else None


def _unknown(key: str, where: str, spell: Callable[[str], str] = repr) -> ConfigError:
    """An unknown setting, with the closest declared one as a suggestion."""
    close = _closest(key)
    hint = f" (did you mean {spell(close)}?)" if close else ""
    return ConfigError(f"{where}: unknown setting {spell(key)}{hint}")


def _parse(name: str, value: object, where: str) -> Any:
    meta: Meta = FIELDS[name].metadata["meta"]
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
    import tomllib  # only with a config file

    try:
        return tomllib.loads(source), source
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, source, exc) from None
    except ValueError:  # Python's limit on converting digits
        raise ConfigError(f"{path}: invalid TOML: an integer of more than {sys.get_int_max_str_digits()} "
                          "digits") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None


def read_file(path: str) -> dict[str, Any]:
    """Parse a TOML config file into setting values, naming the file and line on any error."""
    data, source = _read_toml(path)
    values: dict[str, Any] = {}
    for key, value in data.items():
        line = _key_line(source, key)
        where = f"{path}, line {line}" if line else path
        if key == "config":
            raise ConfigError(f"{where}: 'config' cannot be set in a config file (use -c or PREFORK_CONFIG)")
        if key not in FIELDS and isinstance(value, dict):
            raise ConfigError(f"{where}: unknown table [{key}] (settings are top-level keys, before any table)")
        if key not in FIELDS:
            raise _unknown(key, where)
        if isinstance(value, int) and line and _written_in_octal(source, line):
            value = FileMode(value)  # umask = 0o077; a mode written in decimal is refused
        values[key] = _parse(key, value, where)
    return values


def _written_in_octal(source: str, line: int) -> bool:
    """Whether the integer assigned on ``line`` is written ``0o...`` (tomllib gives only its value)."""
    return re.search(r"=[ \t]*[+-]?0o", source.split("\n")[line - 1]) is not None


def env_var(name: str) -> str:
    """The environment variable that sets ``name``."""
    return ENV_PREFIX + name.upper()


_ignored_variables: set[str] = set()  # warned about once: each reload reads the environment again


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Setting values from ``PREFORK_<NAME>`` variables.

    An unknown one close to a setting's name is a typo, an error with the
    suggestion; one close to none (``PREFORK_HOME``, another tool's) is ignored
    with a warning, as gunicorn ignores what it does not know.
    """
    values: dict[str, Any] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in FIELDS and _closest(key) is None:
            if var not in _ignored_variables:
                _ignored_variables.add(var)
                logging.getLogger("prefork").warning("ignoring the environment variable %s: no setting is named so",
                                                     var)
            continue
        if key not in FIELDS:
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
    origin: dict[str, str] = {name: "default" for name in names()}
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
