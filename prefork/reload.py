"""Reload generations (HUP): a trial generation with the new settings, then commit or abandon.

A HUP reads the settings again (:func:`read_new_settings`: a ConfigError refuses
the reload and nothing changes). The new generation then boots beside the one
serving, on trial (:meth:`Generations.begin`). Once every one of its workers has
booted it serves and the old one is retired gracefully (:meth:`Generations.commit`);
if one of its workers exits during boot, or a newer HUP supersedes it, it is
stopped and the serving generation goes on as if nothing happened
(:meth:`Generations.abandon`). The worker count follows: the new settings'
``--workers`` while a reload is on trial, the serving ones' again if it is given up.

What the master loads once per generation for its workers to inherit (:class:`Loaded`:
the TLS context, the ``--access-log`` file) is loaded with its settings, at start and
at each HUP, and a HUP that cannot load it is refused like bad settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import hooks
from .errors import ConfigError
from .listeners import Listeners
from .log import AccessLogFile, Log
from .record import dataclass
from .settings import Settings, start_only_changes
from .stats import Stats
from .systemd import Notifier
from .view import ServerView, settings_for
from .worker_count import WorkerCount
from .worker_table import ForkWith, WorkerTable

if TYPE_CHECKING:
    from ssl import SSLContext

    from .boot import BootPolicy

log = logging.getLogger("prefork")


@dataclass(frozen=True)
class Loaded:
    """What the master loads once per generation, from its settings, for that generation's workers to inherit."""

    tls_context: SSLContext | None = None
    access_log: AccessLogFile | None = None  # --wsgi --access-log FILE (None: none, or "-": stdout)

    def close(self) -> None:
        """The master's copy, once no worker is to be forked for the generation (its workers keep theirs)."""
        if self.access_log is not None:
            self.access_log.close()


class Generations:
    """The serving generation and its settings, and the generation on trial during a reload."""

    def __init__(self, settings: Settings, listeners: Listeners, table: WorkerTable, stats: Stats,
                 notifier: Notifier, count: WorkerCount, tls_context: SSLContext | None = None,
                 access_log: AccessLogFile | None = None) -> None:
        self.settings = settings
        self.generation = 1
        self.newest = 1  # the last generation started: numbers are never reused (a kept one may still serve)
        self.pending: int | None = None
        self.pending_settings: Settings | None = None
        # Each generation's TLS context and access log, loaded once from its settings (start, HUP): workers
        # inherit them.
        self.loaded = Loaded(tls_context, access_log)
        self.pending_loaded: Loaded | None = None
        # Rolling reloads that stopped half-way (a boot failed, a newer HUP): their booted workers serve
        # on beside the serving generation's, until a reload commits.
        self.kept: frozenset[int] = frozenset()
        self.listeners, self.table, self.stats, self.notifier, self.count = listeners, table, stats, notifier, count

    def target(self) -> int:
        """The generation new workers are forked for."""
        return self.pending if self.pending is not None else self.generation

    def rolling(self) -> bool:
        """Whether the reload under way replaces its workers K at a time."""
        return self.pending_settings is not None and self.pending_settings.reload_strategy == "rolling"

    def rollout_room(self, view: ServerView) -> int:
        """Rolling reload: how many more new workers may be forked now. At most K boot at once,
        and the master never has more than N + K workers (stopping ones included)."""
        assert self.pending_settings is not None
        batch = self.pending_settings.reload_batch
        booting = sum(1 for w in view.workers.values()
                      if w.generation == self.pending and not w.booted and w.stopping is None)
        return max(0, min(batch - booting, view.num_workers + batch - len(view.workers)))

    def missing(self, view: ServerView) -> list[int]:
        """The worker indexes to fork now, for :meth:`target`. The serving generation counts the kept
        generations' workers as its own; a reload's replaces every index, at most K at a time if rolling."""
        generation = self.target()
        if generation != self.pending:
            return self.table.missing(generation, view.num_workers, self.kept)
        missing = self.table.missing(generation, view.num_workers)
        return missing[:self.rollout_room(view)] if self.rolling() else missing

    def spawn_missing(self, view: ServerView, boot: BootPolicy, fork_with: ForkWith) -> None:
        """Fork the :meth:`missing` workers of :meth:`target`, with that generation's settings and what was
        loaded for it."""
        generation = self.target()
        loaded = self.loaded_for(generation)
        self.table.spawn_missing(generation, self.missing(view), boot, settings_for(view, generation),
                                 loaded.tls_context, loaded.access_log, fork_with)

    def retire_replaced(self, graceful_timeout: float) -> None:
        """Retire the workers whose replacement booted (--max-requests, memory; a rolling reload's)."""
        self.table.retire_replaced(graceful_timeout, self.kept)
        if self.pending is not None and self.rolling():
            self.table.retire_rolled(self.pending, graceful_timeout)

    def read(self, view: ServerView, reload_settings: Callable[[], Settings], log_: Log,
             preloaded: bool) -> tuple[Settings, Loaded] | None:
        """The settings a HUP asks for and what they load, or None if refused (logged, reported): nothing
        changes."""
        try:
            return read_new_settings(reload_settings, self.settings, log_, preloaded)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.refused(view, str(exc))
            return None

    def reload(self, view: ServerView, reload_settings: Callable[[], Settings], log_: Log,
               preloaded: bool) -> Settings | None:
        """HUP: read the settings again and put a generation with them on trial; its settings, or None if
        refused (nothing changes)."""
        self.notifier.reloading(view)
        read = self.read(view, reload_settings, log_, preloaded)
        new = read and self.begin(view, *read)
        if new is not None:
            log_.set_level(new.log_level)
            self.count.reset(new)
        return new

    def loaded_for(self, generation: int) -> Loaded:
        if generation == self.pending and self.pending_loaded is not None:
            return self.pending_loaded
        return self.loaded

    def reopen_access_logs(self) -> None:
        """USR1: the master opens its access logs again (logrotate moved them): workers forked from now on get
        the new file; those running switch themselves (http/accesslog.py)."""
        for loaded in (self.loaded, self.pending_loaded):
            if loaded is not None and loaded.access_log is not None:
                loaded.access_log.reopen()

    def begin(self, view: ServerView, new: Settings, loaded: Loaded) -> Settings | None:
        """Put a generation with ``new`` on trial; its settings (binds completed), or None if refused."""
        if self.pending is not None:
            self.abandon(view, "superseded by a newer reload", failed=False)
        try:
            new = self.listeners.open_added(new)
        except Exception as exc:  # BindError and friends: keep serving as we were
            log.error("reload refused: %s", exc)
            self.refused(view, str(exc))
            loaded.close()
            return None
        self.pending = self.newest = self.newest + 1
        self.pending_settings, self.pending_loaded = new, loaded
        rolling = f", rolling {new.reload_batch} at a time" if new.reload_strategy == "rolling" else ""
        log.info("reloading: starting generation %d (%d workers%s)", self.pending, new.workers, rolling)
        return new

    def refused(self, view: ServerView, why: str) -> None:
        self.notifier.reload_failed(view, why)
        self.stats.reload_failed(why)

    def commit(self, view: ServerView) -> None:
        """The generation on trial has booted: it serves, and the one before retires gracefully."""
        assert self.pending is not None and self.pending_settings is not None
        old = self.generation
        self.generation, self.settings = self.pending, self.pending_settings
        assert self.pending_loaded is not None
        self.loaded.close()
        self.loaded = self.pending_loaded
        self.pending, self.pending_settings, self.pending_loaded = None, None, None
        self.kept = frozenset()
        self.listeners.close_unlisted(self.settings, say=True)
        self.stats.reloads += 1
        retiring = self.table.retire_other_generations(self.generation, self.settings.graceful_timeout)
        log.info("reload done: generation %d serving, retiring %d workers of generation %d",
                 self.generation, retiring, old)
        self.notifier.ready(view)

    def abandon(self, view: ServerView, why: str, failed: bool = True) -> None:
        """Give up the generation on trial; the serving one goes on as if nothing happened (``failed``: and
        systemd hears why)."""
        if failed:
            log.error("reload failed: %s; generation %d keeps serving", why, self.generation)
            self.stats.reload_failed(why)
        else:
            log.info("generation %d %s", self.pending, why)
        if self.pending is not None and self.rolling():
            # The workers it replaced stay replaced (their code booted); the old ones left serve on.
            self.table.stop_booting(self.pending, self.settings.graceful_timeout)
            self.kept |= {self.pending}
        elif self.pending is not None:
            # Gracefully: its booted workers already accept, and may be serving someone.
            self.table.stop_generation(self.pending, self.settings.graceful_timeout)
        if self.pending_settings is not None:
            self.listeners.close_unlisted(self.settings, say=False)
        if self.pending_loaded is not None:
            self.pending_loaded.close()
        self.pending, self.pending_settings, self.pending_loaded = None, None, None
        self.count.reset(self.settings)
        if failed:
            self.notifier.reload_failed(view, why)


def read_new_settings(reload_settings: Callable[[], Settings], current: Settings, log_: Log,
                      preloaded: bool) -> tuple[Settings, Loaded]:
    """The settings a HUP asks for, checked, and what they load (TLS context, access log), with the log
    switched to them; ConfigError refuses the reload."""
    new = reload_settings()
    hooks.import_hooks(new)
    loaded = Loaded(load_tls_context(new), load_access_log(new))
    try:
        switch_log(log_, new)
    except ConfigError:
        loaded.close()
        raise
    if preloaded:
        log.warning("--preload: new workers reuse the app loaded at start (%s); "
                    "only a binary upgrade (USR2) loads new app code", current.app)
    unchanged = start_only_changes(current, new)
    if unchanged:
        log.warning("reload: %s only take effect when the master starts (USR2 or restart)", ", ".join(unchanged))
    return new, loaded


def load_tls_context(settings: Settings) -> SSLContext | None:
    """The TLS context ``settings`` ask for, loaded from the files now (ConfigError names the one that failed)."""
    if not settings.certfile:
        return None  # and ssl is never imported
    from . import tls

    return tls.load_context(settings)


def access_log_path(settings: Settings) -> str | None:
    """The access log file the master opens for a generation of ``settings`` (--wsgi; ``-`` is stdout: none)."""
    path = settings.access_log
    return path if settings.wsgi and path and path != "-" else None


def load_access_log(settings: Settings) -> AccessLogFile | None:
    """The ``--access-log`` file ``settings`` ask for, opened now as the log file is (ConfigError if it cannot
    be)."""
    path = access_log_path(settings)
    if path is None:
        return None
    try:
        return AccessLogFile(path)
    except OSError as exc:
        raise ConfigError(f"access_log: cannot open {path!r}: {exc.strerror}") from None


def switch_log(log_: Log, new: Settings) -> None:
    """HUP: reopen the log file, or move to the one the new settings name (ConfigError if it cannot open)."""
    try:
        log_.use(new.log_file)
    except OSError as exc:
        raise ConfigError(f"log_file: cannot open {new.log_file!r}: {exc.strerror}") from None
