"""`prefork run` read without click, when click would read the command line as it is.

Importing click and building its option table from the declaration is about a third
of what prefork itself spends before its first answer (the startup rows of ``python -m
bench``). A plain ``prefork run [OPTIONS] APP``, each option spelt whole (``--name VALUE``,
``--name=VALUE``, ``-X VALUE``, ``--flag``, ``--no-flag``) and each value accepted by its
parser, is read here into the values click would give (the same option strings, the same
parsers, the last of a repeated option, every one of a multiple one). Anything else
(``--help``, ``--exec``, ``--``, an unknown or abbreviated option, ``-wN``, a value that
starts with ``-`` or that its parser refuses, no APP or several) goes to click, which
answers it as always: the same usage line, message and exit status (and so does click's
shell completion).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .errors import ConfigError
from .settings import declared
from .values import Meta, app_spec


def option_decls(name: str, meta: Meta) -> list[str]:
    """A setting's option strings, as cli.py declares them to click (``--flag/--no-flag`` for a switch)."""
    long = "--" + name.replace("_", "-")
    if meta.flag:
        return [f"{long}/--no-{long[2:]}"]
    return [long] if not meta.short else [meta.short, long]


def option_table() -> dict[str, tuple[str, Meta, bool | None]]:
    """Each option string: the setting it sets, its Meta, and for a switch the value it gives."""
    table: dict[str, tuple[str, Meta, bool | None]] = {}
    for f, meta in declared():
        if not meta.cli:
            continue
        for decl in option_decls(f.name, meta):
            if meta.flag:
                on, off = decl.split("/")
                table[on], table[off] = (f.name, meta, True), (f.name, meta, False)
            else:
                table[decl] = (f.name, meta, None)
    return table


def read_run(args: list[str]) -> dict[str, Any] | None:
    """The settings ``prefork run ARGS`` gives, as cli._cli_values would; None: let click read it."""
    table = option_table()
    given: dict[str, list[Any]] = {}
    apps: list[str] = []
    rest = iter(args)
    for token in rest:
        if not token.startswith("-"):
            apps.append(token)
            continue
        option, equals, value = token.partition("=") if token.startswith("--") else (token, "", "")
        entry = table.get(option)
        if entry is None:
            return None
        name, _, switch = entry
        if switch is not None:
            if equals:
                return None
            given.setdefault(name, []).append(switch)
            continue
        if not equals:
            value = next(rest, "-")
            if value.startswith("-"):
                return None
        given.setdefault(name, []).append(value)
    if len(apps) != 1:
        return None
    metas = {name: meta for name, meta, _ in table.values()}
    try:  # as cli._validator calls each parser
        values = {name: metas[name].parse(seen if metas[name].multiple else seen[-1]) for name, seen in given.items()}
        app = app_spec(apps[0])
    except ConfigError:
        return None
    if not app:
        return None
    values = {name: value for name, value in values.items() if value is not None}  # as _cli_values drops them
    values["app"] = app
    return values


def run(args: list[str]) -> None:
    """Serve as ``prefork run ARGS`` (and exit), or return at once when click must read ARGS."""
    if any(name.startswith("_") and name.endswith("_COMPLETE") for name in os.environ):
        return  # click's shell completion asks (its variable is named after the program)
    try:
        cli_values = read_run(args)
    except KeyboardInterrupt:
        print("\nAborted!", file=sys.stderr)  # as click says it
        sys.exit(1)
    if cli_values is None:
        return
    from .start import load_and_serve

    load_and_serve(cli_values)
