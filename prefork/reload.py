"""Reload generations (HUP): a trial generation with the new settings, then commit or abandon.

A HUP reads the settings again (:func:`read_new_settings`: a ConfigError refuses
the reload and nothing changes). The new generation then boots beside the one
serving, on trial (:meth:`Generations.begin`). Once every one of its workers has
booted it serves and the old one is retired gracefully (:meth:`Generations.commit`);
if one of its workers exits during boot, or a newer HUP supersedes it, it is
stopped and the serving generation goes on as if nothing happened
(:meth:`Generations.abandon`). The worker count follows: the new settings'
``--workers`` while a reload is on trial, the serving ones' again if it is given up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import hooks
from .errors import ConfigError
from .listeners import Listeners
from .log import Log
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


class Generations:
    """The serving generation and its settings, and the generation on trial during a reload."""

    def __init__(self, settings: Settings, listeners: Listeners, table: WorkerTable, stats: Stats,
                 notifier: Notifier, count: WorkerCount, tls_context: SSLContext | None = None) -> None:
        self.settings = settings
        self.generation = 1
        self.newest = 1  # the last generation started: numbers are never reused (a kept one may still serve)
        self.pending: int | None = None
        self.pending_settings: Settings | None = None
        # Each generation's TLS context, loaded once from its settings (start, HUP): workers inherit it.
        self.tls_context: SSLContext | None = tls_context
        self.pending_tls_context: SSLContext | None = None
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
        """Fork the :meth:`missing` workers of :meth:`target`, with that generation's settings and TLS context."""
        generation = self.target()
        self.table.spawn_missing(generation, self.missing(view), boot, settings_for(view, generation),
                                 self.context_for(generation), fork_with)

    def retire_replaced(self, graceful_timeout: float) -> None:
        """Retire the workers whose replacement booted (--max-requests, memory; a rolling reload's)."""
        self.table.retire_replaced(graceful_timeout, self.kept)
        if self.pending is not None and self.rolling():
            self.table.retire_rolled(self.pending, graceful_timeout)

    def read(self, view: ServerView, reload_settings: Callable[[], Settings], log_: Log,
             preloaded: bool) -> tuple[Settings, SSLContext | None] | None:
        """The settings a HUP asks for and their TLS context, or None if refused (logged, reported): nothing
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

    def context_for(self, generation: int) -> SSLContext | None:
        return self.pending_tls_context if generation == self.pending else self.tls_context

    def begin(self, view: ServerView, new: Settings, tls_context: SSLContext | None) -> Settings | None:
        """Put a generation with ``new`` on trial; its settings (binds completed), or None if refused."""
        if self.pending is not None:
            self.abandon(view, "superseded by a newer reload", failed=False)
        try:
            new = self.listeners.open_added(new)
        except Exception as exc:  # BindError and friends: keep serving as we were
            log.error("reload refused: %s", exc)
            self.refused(view, str(exc))
            return None
        self.pending = self.newest = self.newest + 1
        self.pending_settings, self.pending_tls_context = new, tls_context
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
        self.tls_context = self.pending_tls_context
        self.pending, self.pending_settings, self.pending_tls_context = None, None, None
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
        self.pending, self.pending_settings, self.pending_tls_context = None, None, None
        self.count.reset(self.settings)
        if failed:
            self.notifier.reload_failed(view, why)


def read_new_settings(reload_settings: Callable[[], Settings], current: Settings, log_: Log,
                      preloaded: bool) -> tuple[Settings, SSLContext | None]:
    """The settings a HUP asks for, checked, and their TLS context, with the log switched to them;
    ConfigError refuses the reload."""
    new = reload_settings()
    hooks.import_hooks(new)
    context = load_tls_context(new)
    switch_log(log_, new)
    if preloaded:
        log.warning("--preload: new workers reuse the app loaded at start (%s); "
                    "only a binary upgrade (USR2) loads new app code", current.app)
    unchanged = start_only_changes(current, new)
    if unchanged:
        log.warning("reload: %s only take effect when the master starts (USR2 or restart)", ", ".join(unchanged))
    return new, context


def load_tls_context(settings: Settings) -> SSLContext | None:
    """The TLS context ``settings`` ask for, loaded from the files now (ConfigError names the one that failed)."""
    if not settings.certfile:
        return None  # and ssl is never imported
    from . import tls

    return tls.load_context(settings)


def switch_log(log_: Log, new: Settings) -> None:
    """HUP: reopen the log file, or move to the one the new settings name (ConfigError if it cannot open)."""
    try:
        log_.use(new.log_file)
    except OSError as exc:
        raise ConfigError(f"log_file: cannot open {new.log_file!r}: {exc.strerror}") from None
