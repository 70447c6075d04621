"""Server hooks: settings naming ``module:function`` callables run at fixed points.

=============  =========================  ==========================================================
hook           called as                  where and when
=============  =========================  ==========================================================
on_starting    ``on_starting(server)``    master, before it binds or inherits its listeners
when_ready     ``when_ready(server)``     master, once it listens (pid file written), before forking
pre_fork       ``pre_fork(server, w)``    master, just before each fork (``w.pid`` is 0 until then)
post_fork      ``post_fork(server, w)``   the new worker, after its process set-up (signals, TLS
                                          context), before it drops privileges and loads the app
                                          (``w.pid`` is the worker's). Raising fails its boot.
worker_exit    ``worker_exit(server, w)`` master, after reaping a worker (whatever killed it), with
                                          ``w.exit_status`` (as ``os.waitpid`` gave it)
on_reload      ``on_reload(server)``      master, on HUP, once the new settings are accepted
                                          (``server.pending_settings``), before the new workers fork
on_exit        ``on_exit(server)``        master, just before it exits
=============  =========================  ==========================================================

What a hook may read is exactly :class:`Server` (``server``) and :class:`WorkerInfo`
(``w``), both read-only; nothing else of the master is public, so that its
internals can change without breaking a hook. In a worker, ``server`` shows the
master as it was when that worker was forked. Hook modules are imported in the
master when it starts and checked again on each HUP (a module already imported
is not re-read: new hook code needs a binary upgrade or a restart); a hook that
cannot be imported is a configuration error. Master hooks run inside its loop,
so they must be quick. An exception in a hook (even SystemExit) is logged with
its traceback and the server carries on, except in ``post_fork``, where it fails
that worker's boot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import AppImportError, ConfigError
from .importer import import_app
from .record import dataclass
from .view import ServerView, WorkerProcess

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("prefork")

HOOK_NAMES = ("on_starting", "when_ready", "pre_fork", "post_fork", "worker_exit", "on_reload", "on_exit")

Hook = Callable[..., Any]


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as a hook sees it: `pid` (0 in pre_fork), `index` (0 to workers - 1; a replacement
    takes the same), `generation` (1 at start, one more per reload), `booted`, `stopping` ("graceful",
    "fast", "kill" or None), `exit_status` (in worker_exit: as os.waitpid gave it). A copy, taken when
    the hook is called."""

    pid: int  # 0 in pre_fork: not forked yet
    index: int  # its number, 0 .. workers - 1: a replacement takes the same index
    generation: int  # 1 at start, one more for each reload
    booted: bool  # it told the master it serves
    stopping: str | None  # "graceful", "fast" or "kill" once the master asked it to stop
    exit_status: int | None  # worker_exit: the raw os.waitpid() status

    @classmethod
    def of(cls, record: WorkerProcess) -> WorkerInfo:
        return cls(record.pid, record.index, record.generation, record.booted,
                   record.stopping.label if record.stopping else None, record.exit_status)


class Server:
    """The server, as a hook sees it: read-only, always current (each attribute is read when asked)."""

    __slots__ = ("_view",)

    def __init__(self, view: ServerView) -> None:
        self._view = view

    @property
    def pid(self) -> int:
        """The master's pid."""
        return self._view.pid

    @property
    def settings(self) -> Settings:
        """The settings of the generation serving (a frozen ``Settings``: every setting by its name)."""
        return self._view.settings

    @property
    def generation(self) -> int:
        """The generation serving."""
        return self._view.generation

    @property
    def pending_generation(self) -> int | None:
        """The generation on trial during a reload, else None."""
        return self._view.pending

    @property
    def pending_settings(self) -> Settings | None:
        """Its settings (in on_reload: the new settings), else None."""
        return self._view.pending_settings

    @property
    def num_workers(self) -> int:
        """How many workers the master keeps now (after TTIN/TTOU, the adaptive pool)."""
        return self._view.num_workers

    @property
    def workers(self) -> tuple[WorkerInfo, ...]:
        """Every worker not yet reaped, booting, serving or stopping, by generation and index."""
        records = sorted(self._view.workers.values(), key=lambda w: (w.generation, w.index, w.pid))
        return tuple(WorkerInfo.of(record) for record in records)

    @property
    def listeners(self) -> tuple[str, ...]:
        """The addresses served, as the log names them (``127.0.0.1:8000``, ``unix:/run/app.sock``)."""
        return tuple(self._view.listener_names)

    @property
    def stopping(self) -> str | None:
        """``"graceful"`` or ``"fast"`` once the server stops, else None."""
        stop = self._view.stopping
        return stop.label if stop else None

    @property
    def log(self) -> logging.Logger:
        """prefork's logger: what a hook logs there goes where the server's own lines go."""
        return log

    def __repr__(self) -> str:
        return f"<prefork server pid {self.pid} generation {self.generation}>"


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
