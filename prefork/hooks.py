"""Server hooks: settings naming ``module:function`` callables run at fixed points.

=============  =========================  ==========================================================
hook           called as                  where and when
=============  =========================  ==========================================================
on_starting    ``on_starting(server)``    master, before it binds or inherits its listeners
when_ready     ``when_ready(server)``     master, once it listens (pid file written), before forking
pre_fork       ``pre_fork(server, w)``    master, just before each fork; ``w`` is the master's
                                          ``WorkerProcess`` record (``index``, ``generation``;
                                          ``pid`` is 0 until the fork)
post_fork      ``post_fork(server, w)``   the new worker, after its process set-up (signals, TLS
                                          context), before it drops privileges and loads the app;
                                          ``w`` is the ``Worker`` object. Raising fails its boot.
worker_exit    ``worker_exit(server, w)`` master, after reaping a worker (whatever killed it);
                                          ``w`` is the master's ``WorkerProcess`` record, with
                                          ``exit_status`` (as ``os.waitpid`` gave it)
on_reload      ``on_reload(server)``      master, on HUP, once the new settings are accepted
                                          (``server.pending_settings``), before the new workers fork
on_exit        ``on_exit(server)``        master, just before it exits
=============  =========================  ==========================================================

``server`` is the ``Master`` (in a worker: the worker's forked copy of it). Hook
modules are imported in the master when it starts and checked again on each HUP
(a module already imported is not re-read: new hook code needs a binary upgrade
or a restart); a hook that cannot be imported is a configuration error. Master
hooks run inside its loop, so they must be quick. An exception in a hook (even
SystemExit) is logged with its traceback and the server carries on, except in
``post_fork``, where it fails that worker's boot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import AppImportError, ConfigError
from .importer import import_app

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("prefork")

HOOK_NAMES = ("on_starting", "when_ready", "pre_fork", "post_fork", "worker_exit", "on_reload", "on_exit")

Hook = Callable[..., Any]


class HookError(Exception):
    """A hook raised (already logged). Only ``post_fork`` lets it out, as a boot failure."""


def import_hooks(settings: Settings) -> dict[str, Hook]:
    """Import every hook ``settings`` names; ConfigError naming the setting when one cannot be.

    Called when the master starts and on each HUP, so that a wrong hook is refused
    before it matters; later calls find the modules already imported.
    """
    return {name: import_hook(name, spec) for name in HOOK_NAMES if (spec := getattr(settings, name, None))}


def run(name: str, settings: Settings, server: Any, *args: Any) -> bool:
    """Call hook ``name`` as ``settings`` configure it (if at all); log a failure. False if it raised.

    The hook is looked up in the settings the caller acts under (a reload's new
    workers get the new generation's hooks), not kept on any object.
    """
    spec = getattr(settings, name, None)
    if not spec:
        return True
    try:
        import_hook(name, spec)(server, *args)
    except (Exception, SystemExit):  # sys.exit() in a hook must not end the master's loop
        log.exception("hook %s (%s) failed", name, spec)
        return False
    return True


def run_or_raise(name: str, settings: Settings, server: Any, *args: Any) -> None:
    """Call hook ``name``; raise HookError if it raised (after logging it)."""
    if not run(name, settings, server, *args):
        raise HookError(f"hook {name} failed")


def import_hook(name: str, spec: str) -> Hook:
    """The callable named by ``spec`` (``module:function``)."""
    try:
        return import_app(spec)
    except AppImportError as exc:
        raise ConfigError(f"{name}: {str(exc).replace('app ', 'hook ', 1)}") from exc.__cause__
