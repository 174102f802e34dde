# The mount tables, read and written with care: /proc/self/mountinfo (what is mounted where),
# the efs-utils state files that tell which EFS file system a TLS mount is, and /etc/fstab
# lines. Pure text and directory reads, testable on samples without mounting anything.

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

STATE_DIR = "/var/run/efs"
FS_ID_RE = re.compile(r"^fs-[0-9a-f]{8,40}$")
# <fs-id>.efs.<region>.amazonaws.com, optionally prefixed with an AZ name
# (efs-utils mounts one-zone file systems through '<az>.<fs-id>.efs...').
EFS_DNS_RE = re.compile(r"^(?:[a-z0-9-]+\.)?(?P<fs_id>fs-[0-9a-f]+)\.efs\.[a-z0-9-]+\.[a-z0-9.]+$")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


class IdentifyError(Exception):
    """The file system mounted at a path cannot be told from what the
    kernel and efs-utils show."""


@dataclass
class MountEntry:
    """One line of /proc/self/mountinfo, paths unescaped."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    mount_options: str
    fstype: str
    source: str
    super_options: str
    optional: list[str] = field(default_factory=list)

    def option(self, name: str) -> Optional[str]:
        """Value of name=value in the per-mount or the super-block options
        (NFS puts port= in the latter)."""
        for csv in (self.super_options, self.mount_options):
            for item in csv.split(","):
                key, sep, value = item.partition("=")
                if key == name and sep:
                    return value
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mount_point": self.mount_point,
            "source": self.source,
            "fstype": self.fstype,
            "root": self.root,
            "mount_options": self.mount_options,
            "super_options": self.super_options,
        }


def unescape_mount_field(raw: bytes) -> str:
    """Undo the kernel's octal escapes (\\040 space, \\011 tab, \\012
    newline, \\134 backslash); bytes that are not UTF-8 survive through
    surrogateescape, as everywhere else in os."""
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def parse_mountinfo(text: Any) -> list[MountEntry]:
    """Parse mountinfo text (str or bytes). Lines that do not have the
    documented shape (proc(5)) are skipped rather than guessed at."""
    data = os.fsencode(text) if isinstance(text, str) else text
    entries = []
    for line in data.splitlines():
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 4:
            continue
        entries.append(
            MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                root=unescape_mount_field(fields[3]),
                mount_point=unescape_mount_field(fields[4]),
                mount_options=os.fsdecode(fields[5]),
                optional=[os.fsdecode(f) for f in fields[6:sep]],
                fstype=os.fsdecode(fields[sep + 1]),
                source=unescape_mount_field(fields[sep + 2]),
                super_options=os.fsdecode(fields[sep + 3]),
            )
        )
    return entries


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    with open(path, "rb") as fh:
        return parse_mountinfo(fh.read())


def mount_at(entries: list[MountEntry], path: str) -> Optional[MountEntry]:
    """The mount visible at path: the last entry for that mount point (a
    later mount on the same point hides the earlier ones)."""
    found = None
    for entry in entries:
        if entry.mount_point == path:
            found = entry
    return found


def mounts_below(entries: list[MountEntry], path: str) -> list[MountEntry]:
    """Mounts strictly below path (they make 'umount path' fail with EBUSY)."""
    prefix = path.rstrip("/") + "/"
    return [e for e in entries if e.mount_point.startswith(prefix)]


def mount_path_key(path: str) -> str:
    """The mount-path part of an efs-utils state file name: the absolute
    path with '/' turned into '.', leading '.' stripped."""
    return os.path.abspath(path).replace(os.sep, ".").lstrip(".")


def state_file_name(fs_id: str, path: str, port: int) -> str:
    """Name efs-utils gives the state file of a TLS mount."""
    return "%s.%s.%d" % (fs_id, mount_path_key(path), port)


def fs_id_from_source(source: str) -> Optional[str]:
    """fs-id from a source such as 'fs-x:/', 'fs-x.efs.<region>.amazonaws.com:/sub'."""
    host = source.split(":", 1)[0]
    if FS_ID_RE.match(host):
        return host
    match = EFS_DNS_RE.match(host)
    return match.group("fs_id") if match else None


def _state_files(state_dir: str) -> list[str]:
    try:
        return sorted(os.listdir(state_dir))
    except OSError:
        return []


def _fs_ids_for(names: list[str], keys: list[str], port: Optional[str]) -> list[str]:
    """fs-ids of the state files named '<fs-id>.<key>.<port>' for any of
    keys (port: that exact port, or None for any number)."""
    found = []
    for name in names:
        fs_id, dot, rest = name.partition(".")
        if not dot or not FS_ID_RE.match(fs_id):
            continue
        key, dot, tail = rest.rpartition(".")
        if not dot or not tail.isdigit() or key not in keys:
            continue
        if port is not None and tail != port:
            continue
        if fs_id not in found:
            found.append(fs_id)
    return found


def identify_fs(entry: MountEntry, paths: list[str], state_dir: str = STATE_DIR) -> tuple[str, str]:
    """(fs_id, how) for the mount in entry. paths: the mount path as the
    caller named it and as the kernel shows it (efs-utils names its state
    file after the former; they differ only through symlinks).

    how: 'source' (the source names the file system), 'state_file_port'
    (efs-utils TLS mount: 127.0.0.1:/ with port=N, tied to its state file
    by the port), 'state_file_path' (no port, e.g. the lab's bind mount:
    the one state file whose name encodes this path)."""
    fs_id = fs_id_from_source(entry.source)
    if fs_id:
        return fs_id, "source"
    keys = []
    for path in paths:
        if mount_path_key(path) not in keys:
            keys.append(mount_path_key(path))
    names = _state_files(state_dir)
    host = entry.source.split(":", 1)[0]
    port = entry.option("port")
    if host in LOCAL_HOSTS and port and port.isdigit():
        ids = _fs_ids_for(names, keys, port)
        if not ids:
            # Mounted under another spelling of the path: the TLS port is
            # unique among live mounts, which is how efs-utils itself looks.
            ids = [n.partition(".")[0] for n in names if n.endswith("." + port) and FS_ID_RE.match(n.partition(".")[0])]
        if len(ids) == 1:
            return ids[0], "state_file_port"
        raise IdentifyError(_cannot_tell(entry, state_dir, ids, "with port %s" % port))
    ids = _fs_ids_for(names, keys, None)
    if len(ids) == 1:
        return ids[0], "state_file_path"
    raise IdentifyError(_cannot_tell(entry, state_dir, ids, "for this path"))


def _cannot_tell(entry: MountEntry, state_dir: str, ids: list[str], what: str) -> str:
    if ids:
        found = "several efs-utils state files %s in %s name different file systems (%s)" % (
            what,
            state_dir,
            ", ".join(ids),
        )
    else:
        found = "no efs-utils state file %s in %s" % (what, state_dir)
    return "cannot tell which file system is mounted at %s: source %r (%s) does not name one and %s" % (
        entry.mount_point,
        entry.source,
        entry.fstype,
        found,
    )



def merged_options(entry: MountEntry) -> str:
    """Per-mount then super-block options, each once."""
    seen: list[str] = []
    for item in (entry.mount_options + "," + entry.super_options).split(","):
        if item and item not in seen:
            seen.append(item)
    return ",".join(seen)



def fstab_escape(path: str) -> str:
    """A path as fstab(5) spells it (space, tab, newline, backslash octal)."""
    out = path.replace("\\", "\\134")
    for char, code in ((" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        out = out.replace(char, code)
    return out


def fstab_line(fs_id: str, path: str, options: str) -> str:
    opts = [o for o in options.split(",") if o]
    if "_netdev" not in opts:
        # Without _netdev the instance can hang at boot waiting for EFS
        # before the network is up (efs-utils documentation).
        opts.insert(0, "_netdev")
    return "%s:/ %s efs %s 0 0" % (fs_id, fstab_escape(path), ",".join(opts))


def _is_fstab_entry_for(raw: str, path: str) -> bool:
    fields = raw.split()
    return (
        len(fields) >= 2
        and not fields[0].startswith("#")
        and unescape_mount_field(os.fsencode(fields[1])) == path
    )


def fstab_entries_for(text: str, path: str) -> list[str]:
    """The fstab lines (without newline) whose mount point is path."""
    return [raw.rstrip("\n") for raw in text.splitlines(True) if _is_fstab_entry_for(raw, path)]


def fstab_update(text: str, path: str, line: Optional[str]) -> str:
    """text with every entry for mount point path replaced by line (or
    removed when line is None); comments and other entries are untouched."""
    out = []
    placed = False
    for raw in text.splitlines(True):
        if not _is_fstab_entry_for(raw, path):
            out.append(raw)
        elif line is not None and not placed:
            out.append(line + "\n")
            placed = True
    if line is not None and not placed:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(line + "\n")
    return "".join(out)
