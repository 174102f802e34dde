# The releases area, <root>/.reefguide-releases/<target key>/: one directory per kept release,
# history.json (live, kept, pending swap), the lock that serialises runs on a target. Storage
# only: which release goes where is decided by the release engine.

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from typing import Any

from ansible.module_utils.reefguide.fs import is_real_dir
from ansible.module_utils.reefguide.layout import key_to_target

HISTORY = "history.json"
LOCK = ".lock"
RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
LOCK_POLL_SECONDS = 0.5


class ReleaseError(Exception):
    """A release, rollback or prune cannot go ahead; the message says why
    and what to do."""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def timestamp_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def check_release_id(release_id: str) -> str:
    if not RELEASE_ID_RE.match(release_id or ""):
        raise ReleaseError(
            "release_id %r is not safe: use 1-100 characters from A-Z a-z 0-9 . _ + -, starting with a letter or digit"
            % (release_id,)
        )
    return release_id


def empty_history(target: str) -> dict[str, Any]:
    return {"target": target, "live": None, "releases": []}


def load_history(key_dir: str, target: str) -> dict[str, Any]:
    path = os.path.join(key_dir, HISTORY)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return empty_history(target)
    except ValueError as exc:
        raise ReleaseError("release history %s is not valid JSON (%s): fix or remove it" % (path, exc)) from exc
    data.setdefault("live", None)
    data.setdefault("releases", [])
    data.setdefault("target", target)
    return data


def save_history(key_dir: str, history: dict[str, Any]) -> None:
    """Write history.json atomically (temporary file + rename)."""
    path = os.path.join(key_dir, HISTORY)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as fh:
        json.dump(history, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)


def list_releases(key_dir: str, history: dict[str, Any]) -> list[dict[str, Any]]:
    """Kept releases of one target, newest first: those the history knows
    (in its order, most recently retired first), then directories it does
    not know (e.g. left by an interrupted run), newest mtime first. Only
    real directories count; symlinks are never followed."""
    try:
        names = [n for n in os.listdir(key_dir) if not n.startswith(".") and n != HISTORY]
    except FileNotFoundError:
        return []
    present = {n for n in names if is_real_dir(os.path.join(key_dir, n)) and RELEASE_ID_RE.match(n)}
    out = []
    for rel in history.get("releases", []):
        rid = rel.get("release_id")
        if rid in present:
            out.append(dict(rel, path=os.path.join(key_dir, rid)))
            present.discard(rid)
    unknown = sorted(present, key=lambda n: os.lstat(os.path.join(key_dir, n)).st_mtime, reverse=True)
    for rid in unknown:
        out.append({"release_id": rid, "path": os.path.join(key_dir, rid), "retired_at": None})
    return out


def target_keys(releases_root: str) -> list[str]:
    """Every target that has a releases directory under releases_root."""
    try:
        names = sorted(os.listdir(releases_root))
    except FileNotFoundError:
        return []
    return [n for n in names if not n.startswith(".") and is_real_dir(os.path.join(releases_root, n))]


def nested_release_targets(releases_root: str, target_rel: str) -> list[str]:
    """Targets with their own releases below target_rel, relative to it
    (e.g. 'adria/datapackages/Moore_2025' below 'data/reefguide'). A release
    of target_rel carries them over, so a staging copy should leave them out."""
    found = []
    for key in target_keys(releases_root):
        other = load_history(os.path.join(releases_root, key), key_to_target(key)).get("target") or ""
        if other.startswith(target_rel + "/"):
            found.append(other[len(target_rel) + 1:])
    return sorted(found)



def lock_target(key_dir: str, target_rel: str, timeout: int) -> int:
    """Serialise runs on one target: an exclusive flock on its lock file,
    waited for at most timeout seconds. Returns the descriptor to close."""
    path = os.path.join(key_dir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                os.close(fd)
                raise ReleaseError("another efs_release run holds the lock on %s (%s) after %ds; wait for it "
                                   "to finish (a dead run's lock goes away with its process)"
                                   % (target_rel, path, timeout)) from exc
        time.sleep(LOCK_POLL_SECONDS)
