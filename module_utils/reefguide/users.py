# Owner and group names <-> uid and gid on the instance: the one lookup efs_mount and
# efs_release share, so a missing user or group is reported the same way by both.

from __future__ import annotations

import grp
import os
import pwd
from typing import Optional


class UnknownUserError(ValueError):
    """An owner or group named by the caller does not exist on this host."""


def resolve_ids(owner: Optional[str], group: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(uid, gid) for an owner and a group given by name or number; None
    where not given. Raises UnknownUserError for a name this host lacks."""
    return _uid(owner), _gid(group)


def _uid(owner: Optional[str]) -> Optional[int]:
    if owner is None or owner.isdigit():
        return None if owner is None else int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise UnknownUserError(_missing("owner", owner, "user", "uid")) from None


def _gid(group: Optional[str]) -> Optional[int]:
    if group is None or group.isdigit():
        return None if group is None else int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UnknownUserError(_missing("group", group, "group", "gid")) from None


def _missing(what: str, name: str, kind: str, number: str) -> str:
    return "%s %r is not a %s on this host: create the %s first or give a numeric %s" % (
        what, name, kind, kind, number)


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
