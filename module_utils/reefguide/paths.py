# Path safety shared by the modules that write to EFS or S3.
# Every relative path that comes from outside (an S3 key, a 'dest' variable, a
# manifest) goes through safe_relpath() before it is joined to a root, and
# every removal goes through is_within() so nothing outside a root is touched.

from __future__ import annotations

import os
from typing import Optional


class UnsafePathError(ValueError):
    """A relative path that would escape its root, or cannot be stored."""


def safe_relpath(rel: str, what: str = "path") -> str:
    """Normalise a '/'-separated relative path and refuse anything that could
    land outside its root: empty, absolute, '..' components, NUL bytes.
    Spaces, quotes, newlines and non-ASCII are kept byte for byte."""
    if rel is None or rel == "":
        raise UnsafePathError("%s is empty" % what)
    if "\x00" in rel:
        raise UnsafePathError("%s %r contains a NUL byte" % (what, rel))
    if rel.startswith("/"):
        raise UnsafePathError("%s %r is absolute; give it relative to its root" % (what, rel))
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafePathError("%s %r names the root itself" % (what, rel))
    if ".." in parts:
        raise UnsafePathError("%s %r contains '..'" % (what, rel))
    for part in parts:
        if len(os.fsencode(part)) > 255:
            raise UnsafePathError("%s %r has a component longer than 255 bytes" % (what, rel))
    return "/".join(parts)


def safe_join(root: str, rel: str, what: str = "path") -> str:
    """root/rel after safe_relpath(); the result is lexically inside root."""
    return os.path.join(root, *safe_relpath(rel, what).split("/"))


def is_within(root: str, path: str) -> bool:
    """True when path, with every symlink resolved, is root or lies below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def parents_within(root: str, path: str) -> bool:
    """True when the parent directories of path resolve inside root, so that
    creating, replacing or deleting the last component cannot reach outside
    it (the last component itself may be a symlink: it is then handled as a
    link, never followed)."""
    return is_within(root, os.path.dirname(path))


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return "%s" % n
