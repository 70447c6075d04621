"""Who the workers run as: ``--user``, ``--group`` and ``--umask``.

The master keeps the privileges it was started with: it binds (port 80, say),
writes the pid file, and can bind again on a reload. It never hands a path to
the workers' user (no chown): workers log through the master (see log.py). Each worker drops them
right after fork, before the app is imported, in the only safe order:
supplementary groups, then the gid, then the uid (once the uid is gone the
process may no longer change its groups). Then it verifies that none of
root's ids remains, since a worker left with gid 0 or group 0 among its
supplementary groups (a known gunicorn bug) can still read and write what
root's group can.
"""

from __future__ import annotations

import grp
import os
import pwd

from .errors import ConfigError, PreforkError
from .record import dataclass


class PrivilegeError(PreforkError):
    """The worker could not become, or did not fully become, the configured user and group."""


@dataclass(frozen=True)
class Identity:
    """The ids a worker switches to."""

    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups
    name: str  # the user's name, for messages (the uid as text when it has no passwd entry)

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid}, groups {list(self.groups)})"


MAX_ID = 2**32 - 2  # the largest uid or gid; 2**32 - 1 is (uid_t) -1, "unchanged"


def numeric_id(spec: str) -> int | None:
    """``spec`` as a uid or gid when it is one written in ASCII digits; None for a name."""
    if not (spec.isascii() and spec.isdigit()):
        return None  # "²" is a digit to str.isdigit, not to int()
    if len(spec) > 10 or int(spec) > MAX_ID:
        raise ConfigError(f"{spec[:20]!r} is not a uid or gid (at most {MAX_ID})")
    return int(spec)


def lookup_user(spec: str) -> pwd.struct_passwd | None:
    """The passwd entry of a user name or uid; None for a uid with no entry (containers)."""
    uid = numeric_id(spec)
    if uid is not None:
        try:
            return pwd.getpwuid(uid)
        except KeyError:
            return None
    try:
        return pwd.getpwnam(spec)
    except KeyError:
        raise ConfigError(f"{spec!r} is not a user on this system (expected a user name or a uid)") from None


def lookup_group(spec: str) -> int:
    """The gid of a group name or number."""
    gid = numeric_id(spec)
    if gid is not None:
        return gid
    try:
        return grp.getgrnam(spec).gr_gid
    except KeyError:
        raise ConfigError(f"{spec!r} is not a group on this system (expected a group name or a gid)") from None


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The identity workers should take, or None when neither --user nor --group is set.

    With a user that has a passwd entry, the supplementary groups are the ones
    ``initgroups`` would give (its groups in /etc/group); otherwise there are none.
    """
    if user is None and group is None:
        return None
    uid, gid, name = os.getuid(), os.getgid(), str(os.getuid())
    entry = lookup_user(user) if user is not None else None
    if user is not None and entry is None and group is None:
        # Keeping the master's gid (root's, usually) is exactly the mistake to avoid.
        raise ConfigError(f"user {user} has no passwd entry, so no primary group: give --group too")
    if user is not None:
        uid = entry.pw_uid if entry is not None else int(user)
        gid = entry.pw_gid if entry is not None else gid
        name = entry.pw_name if entry is not None else user
    if group is not None:
        gid = lookup_group(group)
    groups: tuple[int, ...] = ()
    if entry is not None:
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    elif user is None:
        groups = (gid,)  # only --group: no supplementary group but that one
    return Identity(uid, gid, groups, name)


def check_can_switch(identity: Identity | None) -> None:
    """At start-up: refuse --user/--group that this process cannot become (not root)."""
    if identity is None or os.geteuid() == 0:
        return
    if identity.uid != os.geteuid() or identity.gid != os.getegid():
        raise ConfigError(f"--user/--group {identity}: switching needs the master to start as root")


def drop_privileges(identity: Identity) -> None:
    """Become ``identity``: groups, then gid, then uid; then verify. Runs in a worker."""
    try:
        if os.geteuid() == 0:
            os.setgroups(list(identity.groups))
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to {identity}: {exc.strerror}") from None
    verify_dropped(identity)


def verify_dropped(identity: Identity) -> None:
    """Raise unless the real, effective and saved ids and the groups are exactly the wanted ones."""
    uids, gids, groups = os.getresuid(), os.getresgid(), set(os.getgroups())
    if set(uids) != {identity.uid} or set(gids) != {identity.gid}:
        raise PrivilegeError(f"after switching to {identity}: uids {uids}, gids {gids} remain")
    if identity.uid != 0 and 0 in uids:
        raise PrivilegeError(f"after switching to {identity}: root's uid remains")
    if identity.gid != 0 and (0 in gids or 0 in groups - set(identity.groups)):
        raise PrivilegeError(f"after switching to {identity}: root's group remains (groups {sorted(groups)})")
    if identity.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PrivilegeError(f"after switching to {identity}: the process could become root again")


def set_umask(mask: int | None) -> None:
    """Apply --umask (before binding: unix socket files are created with it)."""
    if mask is not None:
        os.umask(mask)
