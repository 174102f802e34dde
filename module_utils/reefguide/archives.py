# Archives given as src, unpacked on the controller so that they are staged file by file,
# and the check that a src holds something to stage at all.
#
# An archive is read twice: first its index (tar headers, the zip central directory), where
# every member is checked and counted and the declared sizes are added up against the limits
# before anything is written; then the members are written one by one, each stopped the moment
# it would hold more bytes than its header declares. Only regular files and directories are
# unpacked ('.' is the root itself and is skipped); links, devices, FIFOs, absolute paths and
# '..' are refused. Everything goes into a private directory (0700) that this call creates (never
# one that exists already: it may be another run's); on any failure it is removed again.

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from typing import Optional

from ansible.module_utils.reefguide.paths import UnsafePathError, human_bytes, safe_relpath

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
DEFAULT_MAX_BYTES = 100 * 1024 ** 3
DEFAULT_MAX_MEMBERS = 1000000
UNPACK_PREFIX = "reefguide-efs-unpack-"
CHUNK = 1024 * 1024
# the role variables that set the limits and the directory (named in messages: users set those)
MAX_BYTES_VAR = "reefguide_archive_max_bytes"
MAX_MEMBERS_VAR = "reefguide_archive_max_files"
UNPACK_DIR_VAR = "reefguide_unpack_dir"
ELSE = "or unpack it yourself and give the directory as src"
RECREATE = "Re-create the archive (e.g. tar czf x.tar.gz -C dir .)"


class ArchiveError(ValueError):
    """src cannot be staged as it is; the message says why and what to do."""


class Member:
    """One file or directory of an archive, checked: rel is a safe relative path."""

    __slots__ = ("rel", "is_dir", "size", "mtime", "entry")

    def __init__(self, rel: str, is_dir: bool, size: int, mtime: float, entry: object) -> None:
        self.rel, self.is_dir, self.size, self.mtime, self.entry = rel, is_dir, size, mtime, entry


def archive_kind(path: str) -> str:
    """The archive suffix of path ('' when it is not an archive)."""
    low = path.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if low.endswith(suffix):
            return suffix
    return ""


def _plural(n: int, word: str) -> str:
    if n == 1:
        return "1 " + word
    return "%d %s" % (n, "directories" if word == "directory" else word + "s")


def no_regular_file(src: str, kinds: Counter, what: str = "directory") -> ArchiveError:
    if not kinds:
        return ArchiveError("src %s is an empty %s: nothing to stage" % (src, what))
    only = ", ".join(_plural(n, kind) for kind, n in sorted(kinds.items()))
    return ArchiveError("src %s holds no regular file (only %s): nothing to stage. Give a src with the files "
                        "to stage in it" % (src, only))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "special file"


def check_has_regular_file(src: str) -> None:
    """Refuse a directory src in which no regular file is found (symlinks to files count: whether
    they may be staged is checked by the upload). Stops at the first file found."""
    kinds: Counter = Counter()
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                kinds["broken symlink"] += 1
                continue
            if stat.S_ISREG(st.st_mode):
                return
            kinds[_kind(os.lstat(path).st_mode) if name in filenames else "directory"] += 1
    raise no_regular_file(src, kinds)


def describe_special(src: str) -> str:
    """Why a src that is neither a file nor a directory is refused."""
    return "src %s is a %s, not a file, directory or archive: nothing to stage" % (src, _kind(os.stat(src).st_mode))


# -- reading the index --------------------------------------------------------------------------

def _member_rel(src: str, name: str) -> Optional[str]:
    """The safe relative path of a member; None for the root itself ('.', './')."""
    if not [p for p in name.split("/") if p not in ("", ".")] and not name.startswith("/"):
        return None
    try:
        return safe_relpath(name, "member")
    except UnsafePathError as exc:
        raise ArchiveError("src %s: archive %s: nothing was unpacked. %s, with paths relative to its top "
                           "directory" % (src, exc, RECREATE))


def _refuse_member(src: str, name: str, what: str, fix: str = "Leave it out of the archive") -> ArchiveError:
    return ArchiveError("src %s: archive member %r is %s: only regular files and directories are staged; nothing "
                        "was unpacked. %s, %s" % (src, name, what, fix, ELSE))


def _deref(option: str) -> str:
    return "Put the files themselves in the archive in place of links (e.g. tar czf x.tar.gz %s -C dir .)" % option


def _tar_entries(src: str, tf: tarfile.TarFile, max_members: int):
    count = 0
    for m in tf:
        count += 1
        if count > max_members + 1:  # +1: a '.' member is not counted
            raise _too_many(src, max_members)
        if m.issym() or m.islnk():
            raise _refuse_member(src, m.name, "a %s link to %r" % ("symbolic" if m.issym() else "hard", m.linkname),
                                 _deref("--dereference" if m.issym() else "--hard-dereference"))
        if not (m.isfile() or m.isdir()):
            kind = ("a FIFO" if m.isfifo() else "a device" if (m.ischr() or m.isblk()) else "not a plain file")
            raise _refuse_member(src, m.name, kind)
        yield m.name, m.isdir(), m.size, float(m.mtime), m


def _zip_entries(src: str, zf: zipfile.ZipFile, max_members: int):
    infos = zf.infolist()
    if len(infos) > max_members + 1:
        raise _too_many(src, max_members)
    for info in infos:
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        if stat.S_ISLNK(mode):
            raise _refuse_member(src, info.filename, "a symbolic link", _deref("--dereference") + " or zip without -y")
        if info.flag_bits & 0x1:
            raise ArchiveError("src %s: archive member %r is encrypted: not staged; nothing was unpacked. Give "
                               "an archive without a password, %s" % (src, info.filename, ELSE))
        is_dir = info.is_dir() or stat.S_ISDIR(mode)
        if mode and stat.S_IFMT(mode) and not (is_dir or stat.S_ISREG(mode)):
            raise _refuse_member(src, info.filename, "a " + _kind(mode))
        mtime = time.mktime(info.date_time + (0, 0, -1))
        yield info.filename, is_dir, 0 if is_dir else info.file_size, mtime, info


def read_index(src: str, archive, max_members: int) -> list[Member]:
    """Every member checked and in order, before anything is written; conflicting paths refused."""
    entries = (_zip_entries(src, archive, max_members) if isinstance(archive, zipfile.ZipFile)
               else _tar_entries(src, archive, max_members))
    members: list[Member] = []
    kinds: dict[str, bool] = {}  # rel -> is_dir, parents included
    for name, is_dir, size, mtime, entry in entries:
        rel = _member_rel(src, name)
        if rel is None:
            if not is_dir:
                raise _refuse_member(src, name, "a file in place of the archive's top directory", RECREATE)
            continue
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            path, here_dir = "/".join(parts[:i]), i < len(parts) or is_dir
            if kinds.get(path, here_dir) != here_dir or (path == rel and not is_dir and path in kinds):
                raise ArchiveError("src %s: archive member %r appears twice, or as a file and as a directory: "
                                   "nothing was unpacked. %s" % (src, name, RECREATE))
            kinds[path] = here_dir
        members.append(Member(rel, is_dir, size, mtime, entry))
    if len(members) > max_members:
        raise _too_many(src, max_members)
    return members


def _too_many(src: str, limit: int) -> ArchiveError:
    return ArchiveError("src %s: the archive holds more than %s (files and directories), the limit set by %s; "
                        "nothing was unpacked. If it is meant to hold that many, raise the limit (-e %s=<count>), %s"
                        % (src, _plural(limit, "member"), MAX_MEMBERS_VAR, MAX_MEMBERS_VAR, ELSE))


def check_limits(src: str, members: list[Member], max_bytes: int, into: str) -> None:
    total = sum(m.size for m in members)
    if total > max_bytes:
        raise ArchiveError("src %s: the archive unpacks to %s (%d bytes, from its index), over the limit of %s "
                           "(%d bytes) set by %s; nothing was unpacked. If it is meant to be that big, raise the "
                           "limit (-e %s=<bytes>) with room for it in %s, %s"
                           % (src, human_bytes(total), total, human_bytes(max_bytes), max_bytes, MAX_BYTES_VAR,
                              MAX_BYTES_VAR, os.path.dirname(into) or into, ELSE))
    free = shutil.disk_usage(into).free
    if total > free:
        raise ArchiveError("src %s: the archive unpacks to %s but %s has only %s free; nothing was unpacked. Free "
                           "space there, set TMPDIR (or %s) to a directory with room, %s"
                           % (src, human_bytes(total), into, human_bytes(free), UNPACK_DIR_VAR, ELSE))
    if not any(not m.is_dir for m in members):
        raise no_regular_file(src, Counter({"directory": len(members)}) if members else Counter(), "archive")


# -- the directory it goes into ----------------------------------------------------------------

def make_unpack_dir(unpack_dir: Optional[str], run_id: str) -> str:
    """A new private directory (0700) made by this call: in $TMPDIR when unpack_dir is not given,
    else unpack_dir itself. An unpack_dir that exists already, even empty, is refused and left
    exactly as it was: only a directory this run made is unpacked into, and removed."""
    if not unpack_dir:
        return tempfile.mkdtemp(prefix="%s%s-" % (UNPACK_PREFIX, run_id))
    try:
        os.mkdir(unpack_dir, 0o700)  # exclusive: two runs never get the same directory
        os.chmod(unpack_dir, 0o700)  # whatever the umask
        return unpack_dir
    except FileExistsError:
        pass
    except OSError as exc:
        raise ArchiveError("unpack_dir %s (%s) cannot be created: %s. Give a directory whose parent exists, or "
                           "leave %s empty for a new private directory in $TMPDIR" % (unpack_dir, UNPACK_DIR_VAR,
                                                                                     exc.strerror, UNPACK_DIR_VAR))
    st = os.lstat(unpack_dir)
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != os.geteuid():
        problem = "belongs to uid %d, not to this user (uid %d)" % (st.st_uid, os.geteuid())
    elif stat.S_IMODE(st.st_mode) != 0o700:
        problem = "has mode %04o, not 0700 (others could read or change what is staged)" % stat.S_IMODE(st.st_mode)
    elif os.listdir(unpack_dir):
        problem = "is not empty (it may be another run's)"
    else:
        problem = "may be another run's (a run unpacks only into a directory it creates)"
    raise ArchiveError("unpack_dir %s (%s) already exists and %s: nothing in it was touched. Give a directory that "
                       "does not exist yet (one per deployment), or leave %s empty for a new private directory in "
                       "$TMPDIR" % (unpack_dir, UNPACK_DIR_VAR, problem, UNPACK_DIR_VAR))


# -- writing -----------------------------------------------------------------------------------

def _lying(src: str, m: Member, detail: str) -> ArchiveError:
    return ArchiveError("src %s: archive member %r does not hold the %d bytes its header declares (%s): the archive "
                        "is damaged or forged; unpacking stopped and what was unpacked removed. %s and try "
                        "again" % (src, m.rel, m.size, detail, RECREATE))


def _write_file(src: str, stream, path: str, m: Member) -> None:
    """Copy at most m.size bytes, stopping the moment the stream holds more or less."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        written = 0
        while True:
            try:
                block = stream.read(min(CHUNK, m.size + 1 - written))
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
                raise _lying(src, m, str(exc))
            if not block:
                break
            written += len(block)
            if written > m.size:
                raise _lying(src, m, "it holds more")
            out.write(block)
    if written < m.size:
        raise _lying(src, m, "it holds fewer")
    os.utime(path, (m.mtime, m.mtime))


def _open_member(archive, m: Member):
    if isinstance(archive, zipfile.ZipFile):
        return archive.open(m.entry)
    return archive.extractfile(m.entry)


def _extract(src: str, archive, members: list[Member], into: str) -> None:
    for m in members:
        path = os.path.join(into, *m.rel.split("/"))
        if m.is_dir:
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _open_member(archive, m) as stream:
            _write_file(src, stream, path, m)


def _open_archive(src: str):
    if archive_kind(src) == ".zip":
        return zipfile.ZipFile(src)
    return tarfile.open(src, "r:gz")


def unpack(src: str, unpack_dir: Optional[str], run_id: str, max_bytes: int = DEFAULT_MAX_BYTES,
           max_members: int = DEFAULT_MAX_MEMBERS) -> str:
    """Unpack archive src into a private directory (see make_unpack_dir) and return it; on any
    failure nothing unpacked is left behind."""
    into = make_unpack_dir(unpack_dir, run_id)
    try:
        try:
            with _open_archive(src) as archive:
                members = read_index(src, archive, max_members)
                check_limits(src, members, max_bytes, into)
                _extract(src, archive, members, into)
        except (tarfile.TarError, zipfile.BadZipFile, NotImplementedError, EOFError) as exc:
            raise ArchiveError("src %s cannot be read as a %s archive (%s); nothing was unpacked. Check that it is "
                               "whole (unzip -t / tar tzf), %s" % (src, archive_kind(src), exc, ELSE))
        except OSError as exc:
            raise ArchiveError("src %s cannot be unpacked into %s (%s); what was unpacked is removed. Check the free "
                               "space and permissions there, or set TMPDIR (or %s) to another directory"
                               % (src, into, exc, UNPACK_DIR_VAR))
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)
        raise
    return into
