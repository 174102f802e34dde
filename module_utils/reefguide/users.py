# Owner and group names <-> uid and gid on the instance: the one lookup efs_mount and
# efs_release share, so a missing user or group is reported the same way by both.

from __future__ import annotations

import grp
import os
import pwd
from typing import Callable, Optional


class UnknownUserError(ValueError):
    """An owner or group named by the caller does not exist on this host."""


def resolve_ids(owner: Optional[str], group: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(uid, gid) for an owner and a group given by name or number; None
    where not given. Raises UnknownUserError for a name this host lacks."""
    return (_resolve(owner, lambda name: pwd.getpwnam(name).pw_uid, "owner", "user", "uid"),
            _resolve(group, lambda name: grp.getgrnam(name).gr_gid, "group", "group", "gid"))


def _resolve(name: Optional[str], lookup: Callable[[str], int], what: str, kind: str, number: str) -> Optional[int]:
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    try:
        return lookup(name)
    except KeyError:
        raise UnknownUserError("%s %r is not a %s on this host: create the %s first or give a numeric %s"
                               % (what, name, kind, kind, number)) from None


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def home_of(user: str) -> str:
    """user's home directory from the password database, else /home/<user>."""
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return os.path.join("/home", user)
