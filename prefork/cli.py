"""The ``prefork`` command. The only place that turns errors into exit statuses."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from . import __version__, daemon, hooks, privileges, sources
from . import settings as settings_mod
from .errors import EXIT_USAGE, ConfigError, PreforkError
from .importer import add_to_path, load_handler
from .log import Log
from .peer import Handler
from .settings import Settings
from .upgrade import UPGRADE_VAR
from .values import Meta, app_spec

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


def setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one click option per declared setting (the declaration is in settings.py)."""
    for f, meta in reversed(list(settings_mod.declared())):
        if not meta.cli:
            continue
        long = "--" + f.name.replace("_", "-")
        decls = [long] if not meta.short else [meta.short, long]
        if meta.flag:
            decls = [f"{long}/--no-{long[2:]}"]
        help_text = f"{meta.help} [default: {settings_mod.default_text(f, meta)}; env PREFORK_{f.name.upper()}]"
        command = click.option(
            *decls, f.name, default=None, multiple=meta.multiple, metavar=meta.metavar or None,
            help=help_text, callback=_validator(f.name, meta), expose_value=True,
        )(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="prefork")
def main() -> None:
    """A preforking server for any TCP or Unix-socket protocol."""


@main.command()
@click.argument("app", required=False)
@setting_options
def run(app: str | None, **options: Any) -> None:
    """Serve APP (module:handler or module:factory()) with preforked workers.

    handler(conn, addr) is called in a worker once per accepted connection.
    """
    cli_values = _cli_values(app, options)
    environ = dict(os.environ)
    try:
        settings, _ = sources.load(cli_values, environ)
        if not settings.app:
            raise click.UsageError(EXAMPLES_HINT)
        # A reload re-reads the same file even after --chdir: its path, made absolute, is pinned.
        pinned = dict(cli_values, config=settings.config) if settings.config else cli_values
        status = serve(settings, lambda: sources.load(pinned, environ)[0])
    except PreforkError as exc:
        fail(exc, exc.exit_status)
    except KeyboardInterrupt:
        status = 0
    sys.exit(status)


@main.command()
@click.argument("app", required=False)
@setting_options
def check(app: str | None, **options: Any) -> None:
    """Check settings, APP and binds as `prefork run` would, without serving.

    Prints the effective configuration (as TOML, each value with where it came
    from), imports the hooks and APP in a child process and test-binds every
    address. Exit status 0 when all is well, 2 for a settings problem, 4 when the
    app cannot be imported, 1 when an address cannot be bound.
    """
    from . import check as checks

    try:
        settings, origin = sources.load(_cli_values(app, options), dict(os.environ))
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


def _cli_values(app: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (click already parsed each one)."""
    values = {name: value for name, value in options.items() if value is not None}
    if app is not None:
        values["app"] = _parse_app(app)
    return values


def serve(settings: Settings, reload_settings: Callable[[], Settings]) -> int:
    """Prepare this process as the settings say, then run the master until it stops."""
    from .master import Master  # after the CLI is parsed: keeps --help fast
    from .reload import load_tls_context

    identity = privileges.resolve(settings.user, settings.group)
    privileges.check_can_switch(identity)
    if settings.daemon:
        daemon.refuse_under_systemd(os.environ)
    tls_context = load_tls_context(settings)  # once per settings value: the workers inherit it
    prepare_process(settings)
    log = open_log(settings)
    hooks.import_hooks(settings)
    preloaded = preload_app(settings)
    privileges.give_to(identity, [settings.log_file])
    detached = settings.daemon and UPGRADE_VAR not in os.environ  # an upgrade's new master stays put
    if detached:
        check_before_detaching(settings)
        daemon.daemonize()
    try:
        return Master(settings, log, reload_settings=reload_settings, preloaded=preloaded,
                      tls_context=tls_context).run()
    except PreforkError as exc:
        if detached:
            logging.getLogger("prefork").error("%s", exc)  # our stderr is /dev/null now
        raise


def preload_app(settings: Settings) -> Handler | None:
    """--preload: import the app here, in the master, once; workers fork with it loaded."""
    if not settings.preload:
        return None
    handler = load_handler(settings)
    gc.collect()  # before the master first freezes its objects for the forks: no garbage frozen in
    logging.getLogger("prefork").info("preloaded app %s in the master", settings.app)
    return handler


def check_before_detaching(settings: Settings) -> None:
    """What would fail once detached (the app's import, a bind), reported while the terminal shows it."""
    from . import check as checks

    problem = None if settings.preload else checks.check_imports(settings)  # preloaded: already imported
    if problem is None and "LISTEN_FDS" not in os.environ:  # socket activation: nothing to bind
        problem = next(filter(None, (checks.check_bind(a, settings.reuse_port) for a in settings.bind)), None)
    if problem is not None:
        raise problem.error()


def _parse_app(app: str) -> str:
    try:
        return app_spec(app) or ""
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="APP") from None


def prepare_process(settings: Settings) -> None:
    """umask, chdir and sys.path, before anything creates files or imports application code."""
    privileges.set_umask(settings.umask)
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as exc:
            raise ConfigError(f"chdir: cannot change to {settings.chdir!r}: {exc.strerror}") from None
    # Console scripts do not put the current directory on sys.path; APP lives there.
    add_to_path(os.getcwd())


def open_log(settings: Settings) -> Log:
    try:
        return Log(settings.log_level, settings.log_file, settings.log_format)
    except OSError as exc:
        raise ConfigError(f"log_file: cannot open {settings.log_file!r}: {exc.strerror}") from None


def fail(exc: BaseException, status: int) -> None:
    """One line on stderr, the traceback only when it explains the cause."""
    if getattr(exc, "show_traceback", False) and exc.__cause__ is not None:
        import traceback

        traceback.print_exception(exc.__cause__, file=sys.stderr)
    click.echo(f"Error: {exc}", err=True)
    sys.exit(status if status else EXIT_USAGE)


# --- control commands: drive a running server found through its pid file ---

pid_option = click.option(
    "--pid", "pidfile", metavar="FILE", envvar="PREFORK_PID", required=True,
    help="The pid file of the running server (its --pid). [env PREFORK_PID]",
)


def timeout_option(default: float | None, what: str) -> Callable[..., Any]:
    shown = f"default: {default:g}" if default is not None else "default: the server's graceful timeout + 10"
    return click.option("--timeout", type=click.FloatRange(min=0), default=default, metavar="SECONDS",
                        help=f"Give up waiting for {what} after SECONDS [{shown}].")


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
@click.option("--graceful", is_flag=True, help="Let workers finish their connections (TERM) instead of QUIT.")
@timeout_option(None, "the master to exit")
def stop_command(pidfile: str, graceful: bool, timeout: float | None) -> None:
    """Stop the server (fast, or --graceful) and wait until its master has exited."""
    from . import client

    with control_errors():
        click.echo(client.stop(pidfile, graceful, timeout))


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
        click.echo(client.scale(pidfile, count, timeout))
