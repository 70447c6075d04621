"""Documentation generated from the declaration of settings (and the exit statuses).

``python -m prefork.docs`` prints the README's settings reference;
``python -m prefork.docs --write`` rewrites the generated parts in place: the
README sections between ``<!-- BEGIN settings -->`` / ``<!-- END settings -->``
and ``<!-- BEGIN exit-statuses -->`` / ``<!-- END exit-statuses -->``, and the
example configuration ``conf/prefork.toml``. A test fails when any of them
drifts from the declaration, so a new setting is documented by running this.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import errors, hooks
from .record import MISSING, Field
from .settings import declared, default_text
from .sources import ENV_PREFIX
from .values import Meta

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE_CONFIG = ROOT / "conf" / "prefork.toml"


# --- values as TOML ---


def toml_value(value: Any) -> str | None:
    """``value`` written as TOML a person could paste into a config file; None for unset."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)  # FileMode (a umask) reprs itself in octal
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(item) or '""' for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON's escapes are valid in TOML basic strings


def cli_flag(name: str, meta: Meta) -> str:
    """How the setting is spelt on the command line (``-w, --workers N``)."""
    if not meta.cli:
        return f"`{meta.spelt}`" if meta.spelt else f"`{meta.metavar or name.upper()}` argument"
    long = "--" + name.replace("_", "-")
    if meta.flag:
        return f"`{long}` / `--no-{long[2:]}`"
    spelt = f"{meta.short}, {long}" if meta.short else long
    return f"`{spelt} {meta.metavar}`" if meta.metavar else f"`{spelt}`"


def example_value(f: Field, meta: Meta) -> str:
    """The right-hand side of ``name = ...`` in the example config: the default, as TOML.

    An unset default is written ``""`` when the setting reads an empty string as
    unset. A default computed at run time, or one that does not read back as
    itself, is written ``<what it is>``: not TOML, to be edited before uncommenting.
    """
    placeholder = f"<{default_text(f, meta) or 'none'}>"
    if f.default is MISSING:  # a default_factory: computed at run time (the CPU count)
        return placeholder
    written = toml_value(f.default) if f.default is not None else '""'
    try:
        if written is not None and meta.parse(tomllib.loads(f"x = {written}")["x"]) == f.default:
            return written
    except (errors.ConfigError, tomllib.TOMLDecodeError):
        pass
    return placeholder


# --- the README's settings reference ---

SETTINGS_INTRO = """\
## Settings reference

Every setting can be given in three ways, all generated from the one declaration
in `prefork/settings.py`: a key in the TOML file given with `-c, --config FILE`
(`workers = 8`, `bind = ["127.0.0.1:8000", "unix:/run/app.sock"]`), an
environment variable `PREFORK_<NAME>` (lists separated by commas:
`PREFORK_BIND="127.0.0.1:9000,unix:/tmp/a.sock"`), or a command-line option.
Precedence: **command line > environment > config file > defaults**. The app may
be given in the file (`app = "module:handler"`), so `prefork run -c app.toml` works.

`conf/prefork.toml` is a commented example with every setting at its default.
`prefork check [-c FILE] [OPTIONS] [APP]` validates the settings, imports the app
in a child process, test-binds every address and prints the effective
configuration with where each value came from (exit 0, 2 config, 4 app, 1 bind; an
address held by the live server its `--pid` file names is fine, so an edited file can
be checked before `prefork reload`).
A mistake is reported with the file and line (`app.toml, line 3: unknown setting
'wokers' (did you mean 'workers'?)`) and exit status 2; on HUP, an invalid file is
logged and the server keeps the configuration it has. Counts, sizes and durations
must lie within their bounds (below): `inf`, `nan`, a negative number or one past the
maximum is such a mistake, the same in the file, the environment, `run` and `check`
(`prefork run --timeout inf` exits 2 with `Error: Invalid value for '--timeout': inf
is too large (expected seconds from 0 to 86400)`).
Modes (`umask`, `unix_mode`) are octal: in TOML `umask = 0o027` or `umask = "027"`;
a decimal integer (`umask = 27`) is refused with a line saying how to write it.
An unknown `PREFORK_*` variable close to a setting's name (`PREFORK_WOKERS`) is a
mistake, with the suggestion; one close to none (`PREFORK_HOME`) is ignored with a
one-line warning.

**Coming from gunicorn**: `--bind :8000` means `0.0.0.0:8000`, every IPv4 interface, as in
gunicorn (`[::]:8000` is every IPv6 one). An unknown option that is gunicorn's is answered
with prefork's equivalent rather than the nearest spelling: `--print-config` and
`--check-config` with `prefork check`, `--access-logfile` with `--access-log`,
`--error-logfile` with `--log-file`, `--keep-alive` with `--keepalive`, `--pythonpath` with
`--chdir`, `--access-logformat` with `--access-log-format`, `--proxy-allow-from` with
`--proxy-allow`. Whatever the file, the environment or the command line hold, loading them
ends in the settings or in one line and status 2 (`tests/test_fuzz_input.py` fuzzes all three:
150 examples each in CI, `PREFORK_FUZZ_EXAMPLES=5000` for more).
"""

SETTINGS_NOTES = """\
**Hooks** name `module:function` callables. Hook modules are imported in the master
at start and checked again on HUP (a hook that cannot be imported is a configuration
error; a module already imported is not re-read). Master hooks run inside its loop:
keep them quick. An exception in a hook is logged and the server carries on, except
in `post_fork`, where it fails that worker's boot (exit status 3). `post_fork` runs
before the worker drops privileges, as in gunicorn.

What a hook may read is exactly this (read-only; the rest of the master is not public
and may change). In a worker (`post_fork`), `server` shows the master as it was at the fork.

{hook_surface}

**`--preload`** imports the app once in the master, then workers are forked from it
and share its memory copy-on-write (`gc.freeze()` before each fork keeps the
collector from touching those pages). A HUP then re-reads the settings but cannot
load new app code into the master; a binary upgrade (USR2) can.

**`--user` / `--group`**: the master keeps the privileges it started with (so it can
bind port 80, write the pid file and bind again on reload); each worker, after
`post_fork` and before importing the app, sets its supplementary groups (the user's,
as `initgroups` gives them; just the group without `--user`), then its gid, then its uid, and
refuses to serve if any of root's ids remains. Nothing is handed to that user: workers
log through the master (see "Log and pid files"). Switching needs the master to start as
root. **`--umask`** is set in the master before binding (it governs unix socket
modes) and inherited by the workers.

**`--daemon`** detaches from the terminal (fork, `setsid`, fork, standard streams to
`/dev/null`) after checking the settings, the app (with `--preload`) and the binds, so
that most mistakes are still reported on the terminal; later errors go to `--log-file`.
It is refused under systemd (`NOTIFY_SOCKET` set): systemd supervises the process
itself. A binary upgrade's new master does not detach again.
"""


def settings_table() -> Iterator[str]:
    yield "| Setting | Command line | Environment | Default | Bounds | Description |"
    yield "|---|---|---|---|---|---|"
    for f, meta in declared():
        env = f"`{ENV_PREFIX}{f.name.upper()}`"
        default = default_text(f, meta) or "none"
        shown = default if meta.shown_default else f"`{default}`"
        help_text = meta.help + (" *Applied at start; HUP keeps the old value.*" if meta.start_only else "")
        cells = (f"`{f.name}`", cli_flag(f.name, meta), env, shown, meta.bounds, help_text)
        yield "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def hook_surface() -> str:
    """The README's list of what a hook may read, from the facade itself (``hooks.Server``, ``hooks.WorkerInfo``)."""
    lines = []
    for name, member in vars(hooks.Server).items():
        if isinstance(member, property) and member.__doc__:
            lines.append(f"- `server.{name}`: {member.__doc__.strip()}")
    doc = " ".join((hooks.WorkerInfo.__doc__ or "").split())
    lines.append(f"- `worker` (and each of `server.workers`), a `WorkerInfo`: {doc}")
    return "\n".join(lines)


def settings_section() -> str:
    notes = SETTINGS_NOTES.replace("{hook_surface}", hook_surface())
    return SETTINGS_INTRO + "\n" + "\n".join(settings_table()) + "\n\n" + notes


# --- the README's exit statuses, read from errors.py with their comments ---

STATUS_LINE = re.compile(r"^(?P<name>(?:WORKER_)?EXIT_\w+) = (?P<value>\d+)\s*(?:#\s*(?P<why>.*))?$", re.MULTILINE)
STATUS_MEANING = {"EXIT_OK": "stopped normally (or the check passed)", "WORKER_EXIT_OK": "stopped normally"}


def exit_statuses_section() -> str:
    source = inspect.getsource(errors)
    command: list[str] = []
    worker: list[str] = []
    for match in STATUS_LINE.finditer(source):
        name, value = match["name"], match["value"]
        why = match["why"] or STATUS_MEANING.get(name, "")
        (worker if name.startswith("WORKER_") else command).append(f"| {value} | `{name}` | {why} |")
    header = ["| Status | Name | Meaning |", "|---|---|---|"]
    return "\n".join([
        "## Exit statuses", "",
        "Of the `prefork` command (`prefork run`, `prefork check` and the control commands):", "",
        *header, *command, "",
        "Of a worker process, as the master reads them (and logs them):", "",
        *header, *worker, "",
    ])


# --- the example configuration ---

CONFIG_HEADER = """\
# prefork example configuration: every setting, at its default, commented out.
# Generated from prefork/settings.py by `python -m prefork.docs --write`; do not edit by hand.
# Use it with `prefork run -c conf/prefork.toml` (or `prefork check -c ...` first).
# Precedence: command line > environment (PREFORK_<NAME>) > this file > defaults.
"""


def example_config() -> str:
    parts = [CONFIG_HEADER]
    for f, meta in declared():
        if f.name == "config":
            continue  # the file cannot name itself
        note = " Applied at start; HUP keeps the old value." if meta.start_only else ""
        lines = textwrap.wrap(meta.help + note, 86)
        bounds = f" From {meta.bounds}." if meta.bounds else ""
        lines.append(f"Default: {default_text(f, meta) or 'none'}.{bounds} Environment: {ENV_PREFIX}{f.name.upper()}.")
        parts.append("\n" + "\n".join(f"# {line}" for line in lines) + f"\n# {f.name} = {example_value(f, meta)}\n")
    return "".join(parts)


# --- splicing into the README ---


def replace_section(text: str, marker: str, body: str) -> str:
    """``text`` with what lies between the ``marker`` comments replaced by ``body``."""
    begin, end = f"<!-- BEGIN {marker} -->\n", f"<!-- END {marker} -->"
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + body.rstrip("\n") + "\n" + text[stop:]


def section(text: str, marker: str) -> str:
    begin, end = f"<!-- BEGIN {marker} -->\n", f"<!-- END {marker} -->"
    return text[text.index(begin) + len(begin) : text.index(end)]


GENERATED = {"settings": settings_section, "exit-statuses": exit_statuses_section}


def write_all() -> None:
    """Rewrite the generated README sections and the example config in place."""
    text = README.read_text()
    for marker, generate in GENERATED.items():
        text = replace_section(text, marker, generate())
    README.write_text(text)
    EXAMPLE_CONFIG.parent.mkdir(exist_ok=True)
    EXAMPLE_CONFIG.write_text(example_config())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prefork.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md and conf/prefork.toml in place")
    parser.add_argument("--config", action="store_true", help="print the example config instead")
    args = parser.parse_args(argv)
    if args.write:
        write_all()
    elif args.config:
        sys.stdout.write(example_config())
    else:
        sys.stdout.write(settings_section())


if __name__ == "__main__":
    main()
