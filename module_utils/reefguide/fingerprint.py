# A destination's fingerprint: what its tree on EFS looks like, from metadata alone (no file is
# read). The record of what is live keeps the fingerprint taken right after the release, so a later
# run that has EFS mounted anyway can tell that someone changed the destination by hand and drop
# the record (the next stage then compares on the instance instead of trusting it).
#
# A file counts by path, size, mtime and inode: an edit changes mtime (or, written to a new file and
# renamed, the inode), a copy over it with its old mtime kept changes the inode. ctime is left out
# because our own hard-link staging copies change it on every stage; a directory counts by path
# only, because a release may recreate it (a new inode, a new mtime) with the same contents.

from __future__ import annotations

import hashlib
import os
import stat
from typing import Optional

ABSENT = "absent"


class Fingerprints:
    """Accumulates the entries of several destinations during one walk of the EFS root."""

    def __init__(self, dests: list[str], excluded: dict[str, Optional[str]]) -> None:
        # excluded: dest -> the path inside it left out of its fingerprint (the workers' cache)
        self.entries: dict[str, list[str]] = {d: [] for d in dests}
        self.excluded = excluded

    def add(self, rel: str, st: os.stat_result, link_target: str = "") -> None:
        """rel: the entry's path relative to the EFS root."""
        for dest, entries in self.entries.items():
            if rel != dest and not rel.startswith(dest + "/"):
                continue
            inner = rel[len(dest) + 1:]
            skip = self.excluded.get(dest)
            if skip and (inner == skip or inner.startswith(skip + "/")):
                continue
            entries.append(entry_line(inner, st, link_target))

    def digests(self, root: str) -> dict[str, str]:
        out = {}
        for dest, entries in self.entries.items():
            if not os.path.isdir(os.path.join(root, dest)) or os.path.islink(os.path.join(root, dest)):
                out[dest] = ABSENT
                continue
            h = hashlib.sha256()
            for line in sorted(entries):
                h.update(line.encode("utf-8", "surrogateescape") + b"\0")
            out[dest] = h.hexdigest()
        return out


def entry_line(inner: str, st: os.stat_result, link_target: str = "") -> str:
    if stat.S_ISREG(st.st_mode):
        return "f %s %d %d %d" % (inner, st.st_size, st.st_mtime_ns, st.st_ino)
    if stat.S_ISLNK(st.st_mode):
        return "l %s %s" % (inner, link_target)
    if stat.S_ISDIR(st.st_mode):
        return "d %s" % inner
    return "o %s %o" % (inner, stat.S_IFMT(st.st_mode))
