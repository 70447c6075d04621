"""What `prefork run` does once its command line is read: prepare this process, serve, and fail.

Shared by cli.py (click) and quickstart.py (the same command line read without click),
so that neither imports the other; nothing here imports click but :func:`fail`, when it fails.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from . import daemon, hooks, privileges, sources
from .errors import EXIT_USAGE, ConfigError, PreforkError
from .importer import add_to_path, load_handler
from .log import Log
from .peer import Handler
from .settings import Settings
from .upgrade import UPGRADE_VAR


def load_and_serve(cli_values: dict[str, Any], check: Callable[[Settings], None] = lambda settings: None) -> NoReturn:
    """Build the settings from the command line's values (and file and environment), serve, exit."""
    environ = dict(os.environ)
    try:
        settings, _ = sources.load(cli_values, environ)
        check(settings)
        # A reload re-reads the same file even after --chdir: its path, made absolute, is pinned.
        pinned = dict(cli_values, config=settings.config) if settings.config else cli_values
        status = serve(settings, lambda: sources.load(pinned, environ)[0])
    except PreforkError as exc:
        fail(exc, exc.exit_status)
    except KeyboardInterrupt:
        status = 0
    sys.exit(status)


def serve(settings: Settings, reload_settings: Callable[[], Settings]) -> int:
    """Prepare this process as the settings say, then run the master until it stops."""
    from .master import Master  # after the CLI is parsed: keeps --help fast
    from .reload import load_access_log, load_tls_context

    identity = privileges.resolve(settings.user, settings.group)
    privileges.check_can_switch(identity)
    if settings.daemon:
        daemon.refuse_under_systemd(os.environ)
    tls_context = load_tls_context(settings)  # once per settings value: the workers inherit it
    prepare_process(settings)
    log = open_log(settings)
    access_log = load_access_log(settings)  # by the master, before any --user: the workers inherit it
    hooks.import_hooks(settings)
    if settings.exec:
        check_program(settings)
    if settings.wsgi:
        # Imported once here rather than in every worker after fork: the workers share its
        # pages copy-on-write (a --wsgi worker's USS: 4.9 -> 3.5 MB) and skip the import.
        from .http import handler  # noqa: F401
    preloaded = preload_app(settings)
    detached = settings.daemon and UPGRADE_VAR not in os.environ  # an upgrade's new master stays put
    if detached:
        check_before_detaching(settings)
        daemon.daemonize()
    try:
        return Master(settings, log, reload_settings=reload_settings, preloaded=preloaded,
                      tls_context=tls_context, access_log=access_log).run()
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


def check_program(settings: Settings) -> None:
    """--exec: a PROGRAM the workers cannot run is refused now (status 4), not per connection.

    The check runs in a child that becomes the workers' user (check.py). Importing
    check.py loads inetd.py here, in the master, before any worker drops privileges.
    """
    from . import check as checks

    problem = checks.check_imports(settings)
    if problem is not None:
        raise problem.error()


def check_before_detaching(settings: Settings) -> None:
    """What would fail once detached (the app's import, a bind), reported while the terminal shows it."""
    from . import check as checks

    problem = None if settings.preload else checks.check_imports(settings)  # preloaded: already imported
    if problem is None and "LISTEN_FDS" not in os.environ:  # socket activation: nothing to bind
        problem = next(filter(None, (checks.check_bind(a, settings.reuse_port) for a in settings.bind)), None)
    if problem is not None:
        raise problem.error()


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


def fail(exc: BaseException, status: int) -> NoReturn:
    """One line on stderr, the traceback only when it explains the cause."""
    if getattr(exc, "show_traceback", False) and exc.__cause__ is not None:
        import traceback

        traceback.print_exception(exc.__cause__, file=sys.stderr)
    import click  # only to say what went wrong: the run path does without it (quickstart.py)

    click.echo(f"Error: {exc}", err=True)
    sys.exit(status if status else EXIT_USAGE)
