# The local side of a sync: what a push source or a pull destination holds,
# read with one scandir per directory and one stat per entry, and the exclude
# patterns. No S3 and no hashing here: those are the caller's.

from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ansible.module_utils.reefguide.sync_common import (
    MANIFEST_NAME,
    TMP_RE,
    LocalFileError,
    check_relpath,
    parent_dirs,
)


@dataclass
class LocalFile:
    rel: str
    path: str  # what is read (push; a symlink's target) or replaced (pull)
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    kind: str = "file"  # file | link | other (other kinds only in a pull destination)


class SourceTree(NamedTuple):
    """What scan_source() found."""

    files: dict[str, LocalFile]  # rel -> file to push
    empty: list[str]  # directories with nothing to push below them
    warnings: list[str]


class DestTree(NamedTuple):
    """What scan_dest() found."""

    files: dict[str, LocalFile]  # rel -> file, link or other entry (not a directory)
    dirs: set[str]  # real directories
    keep: set[str]  # directories that hold excluded entries
    temporaries: list[str]  # of earlier, interrupted runs


class Matcher:
    """exclude patterns: fnmatch on the relative path; a pattern that matches
    a directory excludes everything below it ('cache', 'tmp/*', '*.log')."""

    def __init__(self, patterns: Optional[list[str]], literal: Optional[list[str]] = None):
        """literal: paths matched as they are spelled ('a[1]' is not a pattern)."""
        self.regexes = [re.compile(fnmatch.translate(p.strip("/"))) for p in (patterns or []) if p.strip("/")]
        self.regexes += [re.compile(re.escape(p.strip("/")) + r"\Z") for p in (literal or []) if p.strip("/")]

    def __call__(self, rel: str) -> bool:
        if not self.regexes:
            return False
        candidates = parent_dirs(rel) + [rel]
        return any(rx.match(c) for rx in self.regexes for c in candidates)


def _check_utf8(rel: str, full: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalFileError(
            "file name %r is not valid UTF-8 and cannot become an S3 key: rename it" % os.fsencode(full)
        )


_EUID = os.geteuid() if hasattr(os, "geteuid") else -1


def _readable(path: str, st: os.stat_result) -> bool:
    """os.access() only when the mode bits leave doubt (one syscall saved
    per file in the common case: root, or the owner with read permission)."""
    if _EUID == 0 or (st.st_uid == _EUID and st.st_mode & stat.S_IRUSR):
        return True
    return os.access(path, os.R_OK)


def scan_source(root: str, excluded: Matcher) -> SourceTree:
    """Files to push below root (or root itself when it is a file), the empty
    directories, and warnings. Symlinks whose target is inside root are
    followed; one that escapes root, dangles or loops is an error."""
    files: dict[str, LocalFile] = {}
    empty: list[str] = []
    warnings: list[str] = []
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise LocalFileError("local path %s does not exist" % root)
    except OSError as exc:
        raise LocalFileError("cannot read local path %s: %s" % (root, exc.strerror or exc))
    if stat.S_ISREG(st.st_mode):
        name = os.path.basename(os.path.normpath(root))
        _check_utf8(name, root)
        check_relpath(name, "file name")
        if not _readable(root, st):
            raise LocalFileError("cannot read %s: permission denied" % root)
        files[name] = LocalFile(name, root, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        return SourceTree(files, empty, warnings)
    if not stat.S_ISDIR(st.st_mode):
        raise LocalFileError("local path %s is neither a file nor a directory" % root)
    real_root = os.path.realpath(root)
    visiting = {real_root}

    def walk(dirpath: str, prefix: str) -> bool:
        """Adds what is below dirpath; True when something was found."""
        try:
            entries = list(os.scandir(dirpath))
        except OSError as exc:
            raise LocalFileError("cannot read directory %s: %s" % (dirpath, exc.strerror or exc))
        found = False
        for entry in entries:
            rel = prefix + entry.name
            if excluded(rel):
                found = True  # an excluded entry keeps its directory non-empty
                continue
            _check_utf8(rel, entry.path)
            if TMP_RE.match(entry.name):
                warnings.append("skipped %s: a temporary file of an interrupted pull" % entry.path)
                continue
            if rel == MANIFEST_NAME:
                raise LocalFileError("%s uses the name this tool keeps its manifest under; rename it" % entry.path)
            path = entry.path
            try:
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    if not (target == real_root or target.startswith(real_root.rstrip("/") + "/")):
                        raise LocalFileError(
                            "symlink %s points outside the source directory %s (to %s): "
                            "copy the data in or exclude the link" % (path, root, target)
                        )
                    try:
                        est = os.stat(path)
                    except FileNotFoundError:
                        raise LocalFileError("symlink %s is dangling (its target %s does not exist)" % (path, target))
                    if stat.S_ISDIR(est.st_mode):
                        if target in visiting:
                            raise LocalFileError("symlink %s makes a loop (to %s)" % (path, target))
                        visiting.add(target)
                        if not walk(path, rel + "/"):
                            empty.append(rel)
                        visiting.discard(target)
                        found = True
                        continue
                    path = target
                else:
                    est = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(est.st_mode):
                        if not walk(path, rel + "/"):
                            empty.append(rel)
                        found = True
                        continue
            except FileNotFoundError:
                continue  # vanished while scanning
            if not stat.S_ISREG(est.st_mode):
                warnings.append("skipped %s: not a regular file" % entry.path)
                continue
            if not _readable(path, est):
                raise LocalFileError("cannot read %s: permission denied" % entry.path)
            files[rel] = LocalFile(rel, path, est.st_size, est.st_mtime_ns, est.st_ino, est.st_ctime_ns)
            found = True
        return found

    walk(root, "")
    return SourceTree(files, empty, warnings)


def scan_dest(root: str, excluded: Matcher) -> DestTree:
    """What a pull destination holds, symlinks never followed: entries
    (files, links, others), real directories, directories that must stay
    because they hold excluded entries, and temporaries of earlier runs."""
    files: dict[str, LocalFile] = {}
    dirs: set[str] = set()
    keep: set[str] = set()
    temporaries: list[str] = []
    if not os.path.lexists(root):
        return DestTree(files, dirs, keep, temporaries)
    if not os.path.isdir(root):
        raise LocalFileError("destination %s exists and is not a directory" % root)
    stack = [("", root)]
    while stack:
        prefix, dirpath = stack.pop()
        try:
            entries = list(os.scandir(dirpath))
        except OSError as exc:
            raise LocalFileError("cannot read directory %s: %s" % (dirpath, exc.strerror or exc))
        for entry in entries:
            rel = prefix + entry.name
            if TMP_RE.match(entry.name):
                temporaries.append(rel)
                continue
            if excluded(rel):
                keep.update(parent_dirs(rel))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                dirs.add(rel)
                stack.append((rel + "/", entry.path))
                continue
            kind = "file" if stat.S_ISREG(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "other"
            files[rel] = LocalFile(rel, entry.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, kind)
    return DestTree(files, dirs, keep, temporaries)
