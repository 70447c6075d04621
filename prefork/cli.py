"""The ``prefork`` command. The only place that turns errors into exit statuses."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from . import __version__, sources
from . import settings as settings_mod
from .errors import ConfigError, PreforkError
from .quickstart import option_decls
from .settings import Settings
from .start import fail, load_and_serve, prepare_process
from .values import Meta, app_spec, command_line, seconds

EXAMPLES_HINT = (
    "Missing APP: the handler to serve, as module:attribute.\n"
    "Try a built-in example:\n"
    "  prefork run prefork.examples:echo     (echoes every byte back)\n"
    "  prefork run prefork.examples:hello    (answers HTTP with Hello, World!)"
)


def _validator(name: str, meta: Meta) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def validate(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or (meta.multiple and not value):
            return None
        try:
            return meta.parse(list(value) if meta.multiple else value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None

    return validate


# gunicorn's option names with no prefork option of a close spelling: click's nearest one would mislead.
GUNICORN_EQUIVALENTS = {
    "--print-config": "prefork check", "--check-config": "prefork check",
    "--access-logfile": "--access-log", "--error-logfile": "--log-file", "--keep-alive": "--keepalive",
    "--access-logformat": "--access-log-format", "--pythonpath": "--chdir",
    "--proxy-allow-from": "--proxy-allow", "--limit-request-field_size": "--limit-request-field-size",
}


class SettingsCommand(click.Command):
    """``run`` and ``check``: an unknown gunicorn option name is answered with prefork's equivalent."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if exc.option_name not in GUNICORN_EQUIVALENTS:
                raise
            # A new error with its own message, in click's words: click 8.5 makes ``possibilities``
            # final, and its constructor keeps only spellings close to the option's.
            equivalent = GUNICORN_EQUIVALENTS[exc.option_name]
            raise click.NoSuchOption(exc.option_name, f"No such option {exc.option_name!r}. Did you mean "
                                     f"{equivalent!r}?", ctx=exc.ctx) from None


def setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one click option per declared setting (the declaration is in settings.py)."""
    for f, meta in reversed(list(settings_mod.declared())):
        if not meta.cli:
            continue
        decls = option_decls(f.name, meta)
        bounds = f"; {meta.bounds}" if meta.bounds else ""
        help_text = f"{meta.help} [default: {settings_mod.default_text(f, meta)}{bounds}; env PREFORK_{f.name.upper()}]"
        command = click.option(
            *decls, f.name, default=None, multiple=meta.multiple, metavar=meta.metavar or None,
            help=help_text, callback=_validator(f.name, meta), expose_value=True,
        )(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="prefork")
def main() -> None:
    """A preforking server for any TCP or Unix-socket protocol."""


def app_or_program(command: Callable[..., Any]) -> Callable[..., Any]:
    """APP, or with --exec the PROGRAM and its arguments after ``--`` (the exec setting, inetd.py)."""
    meta = dict((f.name, m) for f, m in settings_mod.declared())["exec"]
    command = click.argument("app", nargs=-1, metavar="APP | --exec -- PROGRAM [ARGS...]")(command)
    return click.option("--exec", "exec_flag", is_flag=True, default=False,
                        help=f"{meta.help} [env PREFORK_EXEC]")(command)


@main.command(cls=SettingsCommand)
@app_or_program
@setting_options
def run(app: tuple[str, ...], exec_flag: bool, **options: Any) -> None:
    """Serve APP (module:handler or module:factory()) with preforked workers.

    handler(conn, addr) is called in a worker once per accepted connection.
    With --exec, PROGRAM runs once per connection instead, the socket as its
    stdin and stdout (inetd mode).
    """
    load_and_serve(_cli_values(app, options, exec_flag), require_app)


def require_app(settings: Settings) -> None:
    if not settings.app and not settings.exec:
        raise click.UsageError(EXAMPLES_HINT)


@main.command(cls=SettingsCommand)
@app_or_program
@setting_options
def check(app: tuple[str, ...], exec_flag: bool, **options: Any) -> None:
    """Check settings, APP and binds as `prefork run` would, without serving.

    Prints the effective configuration (as TOML, each value with where it came
    from), imports the hooks and APP in a child process and test-binds every
    address. Exit status 0 when all is well, 2 for a settings problem, 4 when the
    app cannot be imported, 1 when an address cannot be bound.
    """
    from . import check as checks

    try:
        settings, origin = sources.load(_cli_values(app, options, exec_flag), dict(os.environ))
        for line in checks.effective_configuration(settings, origin):
            click.echo(line)
        prepare_process(settings)
    except PreforkError as exc:
        fail(exc, exc.exit_status)
    status = 0
    for what, problem in checks.run_checks(settings):
        if problem is None:
            click.echo(f"ok: {what}")
            continue
        click.echo(f"Error: {problem.message}", err=True)
        status = status or problem.status
    sys.exit(status)


def _cli_values(app: tuple[str, ...], options: dict[str, Any], exec_flag: bool = False) -> dict[str, Any]:
    """The settings given on the command line (click already parsed each one)."""
    values = {name: value for name, value in options.items() if value is not None}
    if exec_flag:
        if not app:
            raise click.UsageError("--exec: no PROGRAM given (prefork run --exec [OPTIONS] -- PROGRAM [ARGS...])")
        values["exec"] = _parse_program(app)
    elif len(app) > 1:
        raise click.UsageError(f"got {len(app)} arguments, expected one APP; to run a program per connection, "
                               "use --exec -- PROGRAM [ARGS...]")
    elif app:
        values["app"] = _parse_app(app[0])
    return values


def _parse_program(argv: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return command_line(list(argv))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="PROGRAM") from None


def _parse_app(app: str) -> str:
    try:
        return app_spec(app) or ""
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="APP") from None


# --- control commands: drive a running server found through its pid file ---

pid_option = click.option(
    "--pid", "pidfile", metavar="FILE", envvar="PREFORK_PID", required=True,
    help="The pid file of the running server (its --pid). [env PREFORK_PID]",
)


def timeout_option(default: float | None, what: str) -> Callable[..., Any]:
    shown = (f"default: {default:g}" if default is not None
             else "default: the server's shutdown delay + graceful timeout + 10; --fast: 10")
    return click.option("--timeout", default=default, metavar="SECONDS", callback=_seconds,
                        help=f"Give up waiting for {what} after SECONDS ({seconds.bounds}) [{shown}].")


def _seconds(ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
    """A control command's --timeout, bounded as the settings' durations are."""
    try:
        return None if value is None else float(seconds(value))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@contextlib.contextmanager
def control_errors() -> Iterator[None]:
    """Map a control command's errors to one line and its exit status."""
    try:
        yield
    except PreforkError as exc:
        fail(exc, exc.exit_status)
    except KeyboardInterrupt:
        sys.exit(0)


@main.command("status")
@pid_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of the table.")
@click.option("--watch", is_flag=True, help="Redraw every second, like top (Ctrl-C to leave).")
def status_command(pidfile: str, as_json: bool, watch: bool) -> None:
    """Show the running server: master, workers, their state, connections, CPU and memory."""
    from . import client

    with control_errors():
        client.show_status(pidfile, as_json, watch, click.echo)


@main.command("reload")
@pid_option
@timeout_option(60.0, "the new generation")
def reload_command(pidfile: str, timeout: float) -> None:
    """Reload (HUP) and wait until the new generation of workers serves."""
    from . import client

    with control_errors():
        click.echo(client.reload(pidfile, timeout))


@main.command("stop")
@pid_option
@click.option("--fast", is_flag=True, help="Stop at once (QUIT): connections in flight are cut.")
@click.option("--graceful", is_flag=True, hidden=True, help="The default (kept for compatibility).")
@timeout_option(None, "the master to exit")
def stop_command(pidfile: str, fast: bool, graceful: bool, timeout: float | None) -> None:
    """Stop the server gracefully (TERM; --fast: QUIT) and wait until its master has exited."""
    from . import client

    with control_errors():
        click.echo(client.stop(pidfile, fast, timeout))


@main.command("dump")
@pid_option
@click.option("--worker", "index", type=click.IntRange(0), default=None, metavar="INDEX",
              help="Only this worker (IDX in `prefork status`), of the serving generation.")
@timeout_option(10.0, "the stacks")
def dump_command(pidfile: str, index: int | None, timeout: float) -> None:
    """Print every thread's Python stack of each serving worker (also logged); nothing stops."""
    from . import client

    with control_errors():
        click.echo(client.dump(pidfile, index, timeout), nl=False)


@main.command("scale", context_settings={"ignore_unknown_options": True})
@click.argument("count", metavar="N|+N|-N")
@pid_option
@timeout_option(60.0, "the workers")
def scale_command(count: str, pidfile: str, timeout: float) -> None:
    """Set the number of workers to N, or change it by +N/-N, and wait until they serve."""
    from . import client

    with control_errors():
        change = client.parse_scale(count)  # a wrong N is status 2 before the master is contacted
        click.echo(client.scale(pidfile, change, timeout))
