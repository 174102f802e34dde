# File-system primitives for the modules that change EFS: sizes, deletion that counts the bytes
# it really frees (hard links), atomic swaps, mkdir -p inside a root. No policy here, so the
# release engine, efs_tidy and teardown measure and delete the same way.

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from typing import Optional

from ansible.module_utils.reefguide.paths import UnsafePathError, is_within, parents_within

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def rel_join(base: str, rel: str) -> str:
    """base joined with a '/'-separated relative path ('' is base itself)."""
    return os.path.join(base, *rel.split("/")) if rel else base


def is_real_dir(path: str) -> bool:
    """A directory that is not a symlink."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def ino(path: str) -> Optional[int]:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


def entry_state(path: str) -> str:
    """'absent', 'empty_dir' or 'present' (a symlink counts as present)."""
    if not os.path.lexists(path):
        return "absent"
    if is_real_dir(path) and not os.listdir(path):
        return "empty_dir"
    return "present"


def nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def make_dirs(base: str, path: str, uid: Optional[int] = None, gid: Optional[int] = None) -> None:
    """mkdir -p path (mode 0755), refusing to create anything outside base;
    new directories get uid/gid where given."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for new in reversed(missing):
        if not parents_within(base, new):
            raise UnsafePathError("%s would be created outside %s; refusing" % (new, base))
        os.mkdir(new, 0o755)
        if uid is not None or gid is not None:
            os.chown(new, -1 if uid is None else uid, -1 if gid is None else gid)


def regular_files(top: str, skip: Iterable[str] = ()) -> Iterator[os.stat_result]:
    """lstat of every regular file below top, symlinks not followed; skip:
    entries ('/'-separated, relative to top) left out with all below them."""
    skipped = {os.path.join(top, *entry.split("/")) for entry in skip}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path in skipped:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield st


def tree_size(top: str, skip: Iterable[str] = ()) -> tuple[int, int]:
    """(files, bytes) below top as stored there, a hard-linked file in every
    place it appears (what a version holds, not what deleting it frees)."""
    files = total = 0
    for st in regular_files(top, skip):
        files += 1
        total += st.st_size
    return files, total


class FreedBytes:
    """The bytes that deleting paths frees. A file's blocks go with its last
    link, so its size counts once: when every one of its links has been seen
    among the deleted paths (links seen per inode against st_nlink as first
    seen). One tally across several deletions, done or only planned (check
    mode), counts a file those deletions share once and gives the same sum."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], list[int]] = {}  # (dev, ino) -> [links seen, st_nlink]

    def file(self, st: os.stat_result) -> int:
        """Bytes freed by deleting one link (given its lstat)."""
        if not stat.S_ISREG(st.st_mode):
            return 0
        if st.st_nlink <= 1:
            return st.st_size
        seen = self._seen.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink])
        seen[0] += 1
        return st.st_size if seen[0] == seen[1] else 0

    def tree(self, top: str, skip: Iterable[str] = ()) -> tuple[int, int]:
        """(files, bytes freed) for deleting everything below top but skip."""
        files = freed = 0
        for st in regular_files(top, skip):
            files += 1
            freed += self.file(st)
        return files, freed


# A file deleted while this host still holds it open: its NFS client renames it .nfsXXXX, and
# that name cannot be removed (EBUSY) until the file is closed.
NFS_OPEN_FILE_PREFIX = ".nfs"


def _skip_open_nfs_files(func: object, path: str, exc_info: tuple) -> None:
    """shutil.rmtree's onerror: an .nfs* file still open here stays, and so do the directories that
    hold it (ENOTEMPTY); anything else is raised."""
    exc = exc_info[1]
    if isinstance(exc, OSError) and exc.errno == errno.EBUSY and \
            os.path.basename(path).startswith(NFS_OPEN_FILE_PREFIX):
        return
    if isinstance(exc, OSError) and exc.errno == errno.ENOTEMPTY:
        return
    raise exc


def remove_tree(root: str, path: str, dry_run: bool = False, freed: Optional[FreedBytes] = None,
                contents_only: bool = False, leave_open_nfs_files: bool = False) -> tuple[int, int]:
    """Delete path (a directory or file below root, never root itself), or
    with contents_only what a directory holds, and return (files, bytes
    freed) as FreedBytes counts them (pass one tally for several deletions).
    Refuses anything that resolves outside root; a symlink is removed as a
    link, never followed (shutil.rmtree does not follow links inside the
    tree either). leave_open_nfs_files: the .nfs* files this host still holds
    open stay, with their directories, for a later call to sweep."""
    if not os.path.lexists(path):
        return 0, 0
    resolved = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    if not is_within(root, os.path.dirname(path)) or resolved == os.path.realpath(root):
        raise UnsafePathError("refusing to delete %s: it is not below %s" % (path, root))
    tally = freed if freed is not None else FreedBytes()
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        if not dry_run:
            os.unlink(path)
        return 1, tally.file(st)
    counted = tally.tree(path)
    if not dry_run:
        victims = [os.path.join(path, name) for name in sorted(os.listdir(path))] if contents_only else [path]
        for victim in victims:
            if is_real_dir(victim) and leave_open_nfs_files:
                shutil.rmtree(victim, onerror=_skip_open_nfs_files)
            elif is_real_dir(victim):
                shutil.rmtree(victim)  # fd-based on Linux: never follows a symlink inside
            else:
                os.unlink(victim)
    return counted


def remove_empty_parents(root: str, path: str) -> list[str]:
    """rmdir the empty parents of path, upwards, stopping below root."""
    removed = []
    parent = os.path.dirname(path)
    real_root = os.path.realpath(root)
    while parent != real_root and os.path.realpath(parent) != real_root and is_within(root, parent):
        try:
            os.rmdir(parent)
        except OSError:
            break
        removed.append(parent)
        parent = os.path.dirname(parent)
    return removed


def rename_exchange(a: str, b: str) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE). False
    when the kernel, libc or file system does not support it (NFS, and so
    EFS, does not), so the caller falls back; other errors raise."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return False
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    if func(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a)


def clone(src: str, dst: str, exclude: set[str], rel: str = "") -> tuple[int, int, int]:
    """Hard-link copy of src at dst, leaving out the relative paths in
    exclude; returns (files, bytes, dirs)."""
    files = size = dirs = 0
    st = os.lstat(src)
    os.makedirs(dst)
    shutil.copystat(src, dst, follow_symlinks=False)
    os.chown(dst, st.st_uid, st.st_gid)
    dirs += 1
    for entry in os.scandir(src):
        entry_rel = rel + entry.name
        if entry_rel in exclude:
            continue
        s, d = entry.path, os.path.join(dst, entry.name)
        est = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(est.st_mode):
            f, b, n = clone(s, d, exclude, entry_rel + "/")
            files, size, dirs = files + f, size + b, dirs + n
        elif stat.S_ISLNK(est.st_mode):
            os.symlink(os.readlink(s), d)
            os.lchown(d, est.st_uid, est.st_gid)
        elif stat.S_ISREG(est.st_mode):
            os.link(s, d)
            files += 1
            size += est.st_size
    return files, size, dirs


def tree_entries(top: str, skip: Iterable[str] = ()) -> dict[str, tuple]:
    """Every entry below top (and top itself, as ''), by relative path:
    (kind, inode, mode, uid, gid), kind 'dir' for a real directory and
    'file' for anything else. Entries in skip (relative paths) and what
    they hold are left out."""
    skipped = set(skip)
    st = os.lstat(top)
    out = {"": ("dir", st.st_ino, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)}
    pending = [("", top)]
    while pending:
        rel, path = pending.pop()
        for entry in os.scandir(path):
            entry_rel = rel + "/" + entry.name if rel else entry.name
            if entry_rel in skipped:
                continue
            est = entry.stat(follow_symlinks=False)
            kind = "dir" if stat.S_ISDIR(est.st_mode) else "file"
            out[entry_rel] = (kind, est.st_ino, stat.S_IMODE(est.st_mode), est.st_uid, est.st_gid)
            if kind == "dir":
                pending.append((entry_rel, entry.path))
    return out
