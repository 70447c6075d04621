"""The master's listening sockets, from opening to closing.

The master owns every listening socket for the whole life of the server: the
shared ones that all workers accept on, and with ``--reuse-port`` one set per
worker slot. A socket is closed only when nobody will accept on it again,
because closing a listener drops the connections queued on it.
"""

from __future__ import annotations

import logging
import os

from .drain import queued, refuse_handshakes
from .record import replace
from .settings import Settings
from .sockets import Listener, create_listener, listeners_from_environment, open_listeners, set_blocking_mode
from .upgrade import inherited_ownership

log = logging.getLogger("prefork")


class Listeners:
    """Shared listeners, plus the per-slot sockets of ``--reuse-port``."""

    def __init__(self) -> None:
        self.shared: list[Listener] = []
        self.inherited = False  # from LISTEN_FDS (socket activation, upgrade): --bind does not apply
        self.per_index: dict[int, list[Listener]] = {}  # --reuse-port: the sockets of a worker slot

    def open(self, settings: Settings, environ: dict[str, str] | os._Environ[str]) -> Settings:
        """Inherit (taking LISTEN_* out of ``environ``) or bind the listeners.

        Returns the settings with ``bind`` naming what we serve.
        """
        inherited = listeners_from_environment(environ)
        if inherited is not None:
            # Socket activation or a binary upgrade: serve what we were given, whatever --bind says.
            self.shared, self.inherited = inherited, True
            for listener, owned in zip(inherited, inherited_ownership(environ, len(inherited)), strict=True):
                # Sockets an old master created are ours to unlink at exit; systemd's never are,
                # not even after an upgrade from a socket-activated master.
                listener.owned = owned
            settings = replace(settings, bind=tuple(lst.address for lst in inherited))
        else:
            self.shared = open_listeners(settings.bind, settings.backlog, settings.reuse_port,
                                         unix_mode=settings.unix_mode, unix_owner=settings.unix_owner)
        for listener in self.shared:
            log.info("listening on %s", listener.name)
        return settings

    def for_settings(self, settings: Settings) -> list[Listener]:
        """The shared listeners that ``settings.bind`` names."""
        wanted = set(settings.bind)
        return [listener for listener in self.shared if listener.address in wanted]

    def open_added(self, new: Settings) -> Settings:
        """On reload: open the addresses ``new`` adds (BindError if one fails: nothing else changes).

        Returns ``new``, with the bind list we were started with when our sockets were inherited.
        """
        if self.inherited:
            new = replace(new, bind=tuple(lst.address for lst in self.shared))
        have = {listener.address for listener in self.shared}
        for address in new.bind:
            if address not in have:
                listener = create_listener(address, new.backlog, new.reuse_port,
                                           unix_mode=new.unix_mode, unix_owner=new.unix_owner)
                log.info("listening on %s", listener.name)
                self.shared.append(listener)
        set_blocking_mode(self.for_settings(new))
        return new

    def close_unlisted(self, settings: Settings, say: bool) -> None:
        """Close the shared listeners ``settings.bind`` no longer names (after or instead of a reload)."""
        keep = set(settings.bind)
        for listener in [lst for lst in self.shared if lst.address not in keep]:
            if say:
                log.info("no longer listening on %s", listener.name)
            self.shared.remove(listener)
            listener.close()
        set_blocking_mode(self.for_settings(settings))

    def for_worker(self, index: int, settings: Settings) -> list[Listener]:
        """The sockets worker ``index`` accepts on.

        With --reuse-port each worker slot has its own sockets, kept here in the
        master: closing one would drop the connections queued on it, so a
        replacement (after a death or a reload) takes over its predecessor's.
        """
        if not settings.reuse_port or index == 0:
            # Worker 0 takes the master's own sockets, which are in the same SO_REUSEPORT group:
            # the kernel hashes connections onto them too, so someone must accept there.
            return self.for_settings(settings)
        sockets = self.per_index.get(index)
        if sockets is None:
            # SO_REUSEPORT exists for TCP only: unix and inherited sockets stay shared.
            sockets = [create_listener(lst.address, settings.backlog, True)
                       if lst.address.kind == "tcp" and lst.owned else lst
                       for lst in self.for_settings(settings)]
            set_blocking_mode(sockets)
            self.per_index[index] = sockets
        return sockets

    def all(self) -> list[Listener]:
        """Every socket we hold, each once."""
        return self.shared + [lst for group in self.per_index.values() for lst in self.own_sockets(group)]

    def own_sockets(self, group: list[Listener]) -> list[Listener]:
        """The sockets of a --reuse-port slot that are its own (not the shared unix/inherited ones)."""
        return [lst for lst in group if all(lst is not shared for shared in self.shared)]

    def close_slots(self, wanted: int, in_use: set[int]) -> None:
        """--reuse-port: close a slot's sockets once no worker of that index remains or is wanted."""
        for index in [i for i in self.per_index if i >= wanted and i not in in_use]:
            for listener in self.own_sockets(self.per_index.pop(index)):
                listener.sock.close()

    def stop_serving(self, shared_with_another_master: bool) -> None:
        """The server stops: no new clients on our sockets; the workers drain what the kernel completed.

        If another master serves on these sockets (the one a USR2 started, or the one that
        started us and that we have not yet told to retire), its workers block on them too and
        O_NONBLOCK is shared by all: touch nothing, never unlink, just close our copies.
        """
        if shared_with_another_master:
            self.let_go()
            self.close_ours()
        else:
            self.stop_accepting()

    def stop_accepting(self) -> None:
        """Shutdown: the sockets we own complete no new handshake (drain.py) or lose their path, and turn
        non-blocking for the workers' drain; we keep our copies to count what is left at exit.

        A socket we did not make (systemd's, fd://) is left exactly as it is: it stays open in its
        holder, whose next instance serves its queue.
        """
        for listener in self.all():
            if not listener.owned:
                continue
            if listener.address.kind == "tcp":
                try:
                    refuse_handshakes(listener.sock)
                except OSError as exc:
                    log.warning("%s: cannot stop new handshakes (%s); draining until the graceful timeout",
                                listener.name, exc.strerror)
            listener.unlink()  # a unix socket: no new client can connect once its path is gone
            listener.sock.setblocking(False)

    def still_queued(self) -> int:
        """Connections completed on our own TCP sockets and never accepted (counted before closing)."""
        return sum(queued(lst.sock) for lst in self.all()
                   if lst.owned and lst.address.kind == "tcp" and lst.sock.fileno() != -1)

    def let_go(self) -> None:
        """Another master serves on these sockets: never unlink them, never change their flags."""
        for listener in self.all():
            listener.owned = False

    def close_ours(self) -> None:
        """Close our copies only (the workers', or another master's, stay open)."""
        for listener in self.all():
            listener.sock.close()

    def close_all(self) -> None:
        """At exit: say what is still queued, then close what is still open, unlinking the unix socket files we
        own."""
        lost = self.still_queued()
        if lost:  # the graceful timeout ran out (or a fast stop) with connections still queued
            log.warning("%d queued connection%s closed unserved", lost, "s" if lost != 1 else "")
        for listener in self.all():
            if listener.sock.fileno() != -1:
                listener.close()
