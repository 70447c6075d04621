"""Talking to systemd: the notify protocol and the watchdog.

The protocol needs no library: each message is one datagram of ``KEY=value``
lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or an
abstract address written with a leading ``@``). Only the master talks to
systemd; it sends

- ``READY=1`` once its first generation of workers has booted;
- ``RELOADING=1`` + ``MONOTONIC_USEC=`` when a HUP starts a reload, and
  ``READY=1`` when the reload is over, whether it committed or failed (the
  STATUS line then says why it failed);
- ``STOPPING=1`` when it starts to stop (at TERM, so also when a ``--shutdown-delay``
  begins), with ``EXTEND_TIMEOUT_USEC=`` covering what is left of the delay plus
  the graceful drain (renewed with each STATUS change, as workers finish), so that
  a ``--graceful-timeout`` longer than systemd's ``TimeoutStopSec=`` is honoured;
- ``STATUS=`` whenever the one-line summary changes (it is recomputed each time
  the master wakes up anyway; the master never wakes up just to refresh it);
- ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``, from the master's own loop, so
  that a wedged master gets restarted.

Socket activation (``LISTEN_FDS``) is handled by ``sockets.listeners_from_environment``.

Contract with the binary upgrade (USR2, ``upgrade.py``), which re-executes the master
------------------------------------------------------------------------------------
:meth:`Notifier.from_environment` removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``
and ``WATCHDOG_PID`` from ``os.environ`` (so that workers and the applications
they run cannot speak for the service) and keeps them in the Notifier. Hence:

1. The old master puts :meth:`Notifier.environment` into the new master's
   environment: ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``, never ``WATCHDOG_PID``
   (the new master has a pid of its own, and systemd watches whoever is MAINPID).
2. The new master knows it replaces another from ``_PREFORK_UPGRADE_FROM``
   (``Master.replaces``). Its first ``READY=1`` then carries ``MAINPID=<its pid>``,
   and is sent before it tells the old master to retire (WINCH): only once it
   serves, so if it dies while booting systemd still follows the old master,
   which keeps serving (and pinging the watchdog). It is systemd's child by then
   (upgrade.py starts it through an intermediate process that exits at once):
   a MAINPID that is not its child, systemd would not wait for at the next stop.
   Before that READY=1 it says nothing but WATCHDOG=1 (:meth:`Notifier.standing_by`):
   if it fails to boot, systemd never hears of it, and the old master serves on.
3. The old master, told to retire, calls :meth:`Notifier.hand_over` before
   anything else and sends nothing from then on: its ``STOPPING=1`` would make
   systemd stop the whole service, new master included.

systemd only accepts messages from a process other than the main one with
``NotifyAccess=all`` (see ``systemd/prefork.service``); the new master is such
a process until its ``MAINPID=`` has been accepted.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

from .view import Phase, ServerView, connections_served, generation_booted, phase, serving

log = logging.getLogger("prefork")

NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# Added to the drain time announced in EXTEND_TIMEOUT_USEC: killing the last
# stragglers and reaping them takes a moment after the graceful deadline.
EXTEND_MARGIN = 5.0


class Notifier:
    """The master's line to systemd; every method is a no-op when not run by systemd."""

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if address else 0
        self.active = address is not None  # False after hand_over()
        self.ready_sent = False
        self.last_status = ""
        self.note = ""  # kept at the end of STATUS: why the last reload failed
        self.failures = 0
        self.next_ping: float | None = None
        if self.watchdog_usec:
            self.next_ping = time.monotonic()  # ping at once: the watchdog may already be running

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str]) -> Notifier:
        """Take NOTIFY_SOCKET and the watchdog settings out of ``environ``; see the module's contract."""
        address, usec, watchdog_pid = (environ.pop(var, None) for var in NOTIFY_VARS)
        if address is not None and not address.startswith(("/", "@")):
            log.warning("ignoring NOTIFY_SOCKET=%r: not a path nor an abstract @address", address)
            address = None
        return cls(address, parse_watchdog(usec, watchdog_pid))

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere: started by systemd and not handed over."""
        return self.active and self.address is not None

    def environment(self) -> dict[str, str]:
        """What a re-executed master needs in its environment to talk to systemd in our place."""
        if self.address is None:
            return {}
        env = {"NOTIFY_SOCKET": self.address}
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        return env

    def hand_over(self) -> None:
        """Fall silent for good: the master we upgraded to speaks for the service now."""
        self.active = False

    # --- the master's events ---

    def report(self, master: ServerView) -> None:
        """After every wake-up: READY once the first generation serves, the watchdog, STATUS changes."""
        if not self.enabled:
            return
        self.ping_watchdog()
        if (not self.ready_sent and phase(master) is Phase.SERVING and master.pending is None
                and generation_booted(master, master.generation)):
            self.ready(master)
        elif self.standing_by(master):
            return
        elif phase(master) is not Phase.SERVING:
            self.status(summary(master), drain_left(master))
        else:
            self.status(summary(master))

    def ready(self, master: ServerView) -> None:
        """Serving: after the first boot, and when a reload commits.

        After a binary upgrade (``master.replaces`` still set: the old master is
        told only after this), MAINPID names us so that systemd follows us.
        """
        fields = {"READY": "1", "STATUS": self.with_note(summary(master))}
        if master.replaces is not None and not self.ready_sent:
            fields["MAINPID"] = str(os.getpid())
        if self.send(fields):
            self.ready_sent = True
        self.last_status = fields["STATUS"]

    def standing_by(self, master: ServerView) -> bool:
        """A new master after USR2, before its READY=1: the old master speaks for the service.

        Until then nothing of ours may reach systemd: had it failed to boot, its STOPPING=1
        would stop the service that the old master keeps serving.
        """
        return master.replaces is not None and not self.ready_sent

    def reloading(self, master: ServerView) -> None:
        """A reload starts; MONOTONIC_USEC lets systemd tell this reload from an earlier one."""
        if self.standing_by(master):
            return
        self.note = ""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        status = f"reloading; {summary(master)}"
        self.send({"RELOADING": "1", "MONOTONIC_USEC": str(now_usec), "STATUS": status})
        self.last_status = status

    def reload_failed(self, master: ServerView, why: str) -> None:
        """The reload is over, the old generation still serves: READY again, and STATUS says why."""
        if self.standing_by(master):
            return
        self.note = f"last reload failed: {why}"
        self.ready(master)

    def stopping(self, master: ServerView) -> None:
        """Shutdown starts; ask for enough time to drain, whatever systemd's own stop timeout is."""
        if self.standing_by(master):
            return
        status = summary(master)
        self.send({"STOPPING": "1", "STATUS": status, **extend_timeout(drain_left(master))})
        self.last_status = status

    def status(self, text: str, drain_seconds: float | None = None) -> None:
        """Send the summary line if it changed (renewing the stop timeout while draining)."""
        text = self.with_note(text)
        if text == self.last_status:
            return
        extra = extend_timeout(drain_seconds) if drain_seconds is not None else {}
        self.send({"STATUS": text, **extra})
        self.last_status = text

    def with_note(self, text: str) -> str:
        """``text``, followed by why the last reload failed (until the next reload starts)."""
        return f"{text}; {self.note}" if self.note else text

    # --- the watchdog ---

    def watchdog_deadline(self) -> float | None:
        """When the next WATCHDOG=1 is due (time.monotonic()), for the master's selector timeout."""
        return self.next_ping if self.enabled else None

    def ping_watchdog(self) -> None:
        """Send WATCHDOG=1 if due; the next one is due half a watchdog interval later."""
        if self.next_ping is None or not self.enabled:
            return
        now = time.monotonic()
        if now < self.next_ping:
            return
        self.send({"WATCHDOG": "1"})
        self.next_ping = now + self.watchdog_usec / 2e6

    # --- the wire ---

    def send(self, fields: dict[str, str]) -> bool:
        """One datagram, never blocking the master: if systemd is not reading, the message is lost."""
        if not self.enabled or self.address is None:
            return False
        payload = "\n".join(f"{key}={value.replace(chr(10), ' ')}" for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload.encode("utf-8", "replace"), socket.MSG_DONTWAIT, target)
        except OSError as exc:
            self.failures += 1
            # One warning names the problem; repeating it every watchdog tick would flood the journal.
            level = logging.WARNING if self.failures == 1 else logging.DEBUG
            log.log(level, "cannot notify systemd at %s: %s", self.address, exc.strerror or exc)
            return False
        return True


def summary(master: ServerView) -> str:
    """The line a person reads in ``systemctl status``: "8 workers, generation 3, 1234 connections served"."""
    served = connections_served(master)
    connections = f"{served} connection{'s' if served != 1 else ''} served"
    if phase(master) is Phase.SHUTDOWN_DELAY:
        return f"shutdown delay, still serving: {connections}"
    if master.stopping:
        left = len(master.workers)
        return f"stopping ({master.stopping.label}): {left} worker{'s' if left != 1 else ''} finishing, {connections}"
    up = sum(1 for w in master.workers.values() if serving(w, master.generation))
    wanted = master.settings.workers if master.pending is not None else master.num_workers
    workers = f"{up} worker{'s' if up != 1 else ''}" if up >= wanted else f"{up} of {wanted} workers"
    text = f"{workers}, generation {master.generation}, {connections}"
    if master.pending is not None:
        text += f"; generation {master.pending} booting"
    if master.new_master is not None:
        text += f"; upgrading to a new master (pid {master.new_master})"
    return text


def drain_left(master: ServerView) -> float:
    """Seconds until the last worker's kill deadline (during --shutdown-delay: the rest of it plus
    --graceful-timeout): how long a stop may still take."""
    now = time.monotonic()
    if phase(master) is Phase.SHUTDOWN_DELAY and master.shutdown_delay_ends is not None:
        return max(0.0, master.shutdown_delay_ends - now) + master.settings.graceful_timeout
    return max((w.kill_at - now for w in master.workers.values() if w.kill_at is not None), default=0.0)


def extend_timeout(seconds: float) -> dict[str, str]:
    """The EXTEND_TIMEOUT_USEC field giving systemd ``seconds`` more, plus a margin."""
    return {"EXTEND_TIMEOUT_USEC": str(int((max(0.0, seconds) + EXTEND_MARGIN) * 1e6))}


def parse_watchdog(usec: str | None, pid: str | None) -> int:
    """WATCHDOG_USEC if the watchdog is meant for this process (WATCHDOG_PID unset or ours), else 0."""
    if usec is None:
        return 0
    if pid is not None and parse_pid(pid) != os.getpid():
        return 0  # meant for another process: the one that exec'd us, say
    if not usec.isdigit() or int(usec) == 0:
        log.warning("ignoring WATCHDOG_USEC=%r: not a positive number of microseconds", usec)
        return 0
    return int(usec)


def parse_pid(text: str | None) -> int | None:
    """A positive pid from an environment variable, else None."""
    return int(text) if text is not None and text.isdigit() and int(text) > 0 else None

