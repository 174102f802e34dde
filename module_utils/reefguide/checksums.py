# Local SHA-256s and the cache that keeps them between runs. An unchanged
# tree costs one lstat per file: a file's SHA-256 lives in a cache keyed by
# its stat, together with the ETag of the object its content was last synced
# with, so no file is re-read and no object is HEADed.
#
# The key. A push source (the user's tree, edited with any tool) is keyed by
# (size, mtime_ns, inode, ctime_ns). A pull destination is keyed by (size,
# mtime_ns, inode) only: the stage's staging copy is made of hard links, and a
# link changes every file's ctime, so with ctime every stage re-read every
# unchanged file over NFS (EFS burst credits, Infrequent Access charges).
# Dropping ctime is safe enough there: the pull writes every file under a new
# name and renames it into place (a new inode, with the source's mtime), and a
# hand edit that rewrites, truncates or copies over a file changes its mtime or
# size, and a file moved over it brings its own inode. What goes unseen is an
# edit in place that keeps the size and puts the mtime back to the nanosecond
# (`touch -r`, `cp -p`/`rsync --inplace -t` from a file of the same size and
# mtime): after one, roll back or remove the destination first (README), or
# pull with rehash.

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

from ansible.module_utils.reefguide.local_tree import LocalFile
from ansible.module_utils.reefguide.sync_common import LocalFileError, thread_buffer

# A file modified this close to the moment it was hashed is not cached: a
# second write in the same timestamp tick would leave its stat unchanged.
# Linux timestamps tick at 10 ms or less; a whole-second mtime suggests a
# coarse file system (ext3, FAT: 1-2 s).
RACY_NS = 100000000
RACY_COARSE_NS = 2000000000


def hash_file(path: str, offset: int = 0, length: Optional[int] = None, hasher: Any = None) -> Any:
    """SHA-256 object updated with the bytes of path[offset:offset+length]."""
    h = hasher or hashlib.sha256()
    buf = thread_buffer()
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as fh:
            if offset:
                fh.seek(offset)
            left = length
            while left is None or left > 0:
                n = fh.readinto(view if left is None else view[: min(left, len(buf))])
                if not n:
                    break
                h.update(view[:n])
                if left is not None:
                    left -= n
    except OSError as exc:
        raise LocalFileError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    return h


class Both:
    """Updates two hashers with the same bytes: a file's and one of its parts', in one read."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def update(self, data: Any) -> None:
        self.first.update(data)
        self.second.update(data)


KEY_WITH_CTIME = 4  # fields of the key compared: all four (push), or size, mtime_ns, inode (pull)
KEY_WITHOUT_CTIME = 3


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def file_key(lf: LocalFile) -> list[int]:
    return [lf.size, lf.mtime_ns, lf.ino, lf.ctime_ns]


class CacheEntry(NamedTuple):
    """One file's entry; in the cache file a JSON list of these fields, in this order."""

    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    sha256: str
    etag: Optional[str]  # of the object the file was last found equal to; None until then

    @property
    def key(self) -> list[int]:
        """The stat it was recorded for, as file_key() and stat_key() give it."""
        return [self.size, self.mtime_ns, self.ino, self.ctime_ns]


def default_cache_path(root: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:24]
    return os.path.join(base, "reefguide-efs", "checksums", digest + ".json")


class ChecksumCache:
    """rel -> CacheEntry ([size, mtime_ns, ino, ctime_ns, sha256, etag] on
    disk): the SHA-256 of a local file as long as its stat is unchanged, and the ETag of the object
    it was last found equal to. Entries whose mtime is within RACY_NS of the
    moment they were hashed are not kept. with_ctime=False compares size,
    mtime and inode only (a pull destination: see the top of this file)."""

    VERSION = 1

    def __init__(self, path: Optional[str], root: str, enabled: bool = True, with_ctime: bool = True):
        self.path = path
        self.root = os.path.realpath(root)
        self.entries: dict[str, list] = {}
        self.lock = threading.Lock()
        self.dirty = False
        self.key_fields = KEY_WITH_CTIME if with_ctime else KEY_WITHOUT_CTIME
        self.bytes_read = 0  # of the cache file itself (on EFS for a stage's pull)
        if path and enabled:
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
            self.bytes_read = len(raw)
            doc = json.loads(raw.decode("utf-8", "surrogateescape"))
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("version") == self.VERSION and doc.get("root") == self.root:
            entries = doc.get("files")
            if isinstance(entries, dict):
                self.entries = entries

    def lookup(self, rel: str, key: list[int]) -> Optional[CacheEntry]:
        """rel's entry while its stat is still key, else None."""
        raw = self.entries.get(rel)
        if not raw or not isinstance(raw, list) or len(raw) != len(CacheEntry._fields):
            return None
        entry = CacheEntry._make(raw)
        n = self.key_fields
        return entry if entry.key[:n] == key[:n] else None

    def forget(self, rels: list[str]) -> None:
        """Drops the entries of files about to be replaced or deleted."""
        with self.lock:
            for rel in rels:
                if self.entries.pop(rel, None) is not None:
                    self.dirty = True

    def store(self, rel: str, key: list[int], sha: str, etag: Optional[str], hashed_at_ns: int) -> None:
        with self.lock:
            entry = CacheEntry(*key, sha, etag)
            margin = RACY_COARSE_NS if entry.mtime_ns % 1000000000 == 0 else RACY_NS
            if entry.mtime_ns >= hashed_at_ns - margin:
                self.entries.pop(rel, None)
            else:
                self.entries[rel] = list(entry)
            self.dirty = True

    def save(self, keep: set[str]) -> None:
        if not self.path:
            return
        files = {rel: e for rel, e in self.entries.items() if rel in keep}
        if not self.dirty and len(files) == len(self.entries):
            return
        doc = {"version": self.VERSION, "root": self.root, "files": files}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        os.replace(tmp, self.path)


def local_sha256(
    lf: LocalFile, cache: Optional[ChecksumCache], counted: Optional[Callable[[int], None]] = None
) -> tuple[str, Optional[str]]:
    """(SHA-256, ETag of the object it was last synced with) of a local file:
    from the cache while its stat is unchanged, else read (counted(size) is
    told so) and recorded in the cache with no ETag."""
    entry = cache.lookup(lf.rel, file_key(lf)) if cache else None
    if entry:
        return entry.sha256, entry.etag
    hashed_at = time.time_ns()
    sha = hash_file(lf.path).hexdigest()
    if counted:
        counted(lf.size)
    if cache:
        cache.store(lf.rel, file_key(lf), sha, None, hashed_at)
    return sha, None
