# -*- coding: utf-8 -*-
# Helpers for the modules that run on the management instance against the
# mounted EFS file system: efs_mount (which file system is mounted where,
# who holds a mount, /etc/fstab lines) and efs_release (the releases area:
# history, listing, pruning, atomic swaps).  Teardown reuses the pruning and
# staging-removal functions, so they take plain paths and a dry_run flag.
#
# Runs on the instance: Python 3.9 syntax, standard library only.

from __future__ import annotations

import ctypes
import errno
import fcntl
import grp
import json
import os
import pwd
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ansible.module_utils.reefguide.paths import is_within, parents_within, safe_relpath, tree_size

# ---------------------------------------------------------------------------
# EFS mounts
# ---------------------------------------------------------------------------

STATE_DIR = "/var/run/efs"
FS_ID_RE = re.compile(r"^fs-[0-9a-f]{8,40}$")
# <fs-id>.efs.<region>.amazonaws.com, optionally prefixed with an AZ name
# (efs-utils mounts one-zone file systems through '<az>.<fs-id>.efs...').
EFS_DNS_RE = re.compile(r"^(?:[a-z0-9-]+\.)?(?P<fs_id>fs-[0-9a-f]+)\.efs\.[a-z0-9-]+\.[a-z0-9.]+$")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


class EfsError(Exception):
    """An efs_mount step cannot go ahead; msg says why and what to do,
    result holds what the call had found and done so far."""

    def __init__(self, msg: str, result: Optional[dict[str, Any]] = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.result = dict(result or {})


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


def _same_mount_ns(proc: str, pid: str, own_ns: Optional[str]) -> bool:
    if own_ns is None:
        return True
    try:
        return os.readlink(os.path.join(proc, pid, "ns", "mnt")) == own_ns
    except OSError:
        return False


def _under(path: str, mount_point: str) -> bool:
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def _uses_of(proc: str, pid: str, mount_point: str) -> list[str]:
    """What of process pid lies under mount_point: cwd, root, open files,
    mapped files."""
    uses = []
    base = os.path.join(proc, pid)
    for link in ("cwd", "root"):
        try:
            if _under(os.readlink(os.path.join(base, link)), mount_point):
                uses.append(link)
        except OSError:
            pass
    try:
        fds = os.listdir(os.path.join(base, "fd"))
    except OSError:
        fds = []
    for fd in fds:
        try:
            target = os.readlink(os.path.join(base, "fd", fd))
        except OSError:
            continue
        if _under(target, mount_point):
            uses.append("open file %s" % target)
    try:
        with open(os.path.join(base, "maps"), "rb") as fh:
            for line in fh:
                parts = line.rstrip(b"\n").split(None, 5)
                if len(parts) == 6 and _under(os.fsdecode(parts[5]), mount_point):
                    uses.append("mapped file %s" % os.fsdecode(parts[5]))
                    break
    except OSError:
        pass
    return uses


def processes_using(mount_point: str, proc: str = "/proc") -> list[dict[str, Any]]:
    """Processes in this mount namespace whose cwd, root, open files or
    mapped files lie under mount_point: [{pid, comm, uses}]. Best effort:
    processes in other namespaces, and kernel users such as NFS locks, are
    not seen."""
    try:
        own_ns = os.readlink(os.path.join(proc, "self", "ns", "mnt"))
    except OSError:
        own_ns = None
    me = str(os.getpid())
    holders = []
    for pid in sorted((p for p in os.listdir(proc) if p.isdigit()), key=int):
        if pid == me or not _same_mount_ns(proc, pid, own_ns):
            continue
        uses = _uses_of(proc, pid, mount_point)
        if not uses:
            continue
        try:
            with open(os.path.join(proc, pid, "comm")) as fh:
                comm = fh.read().strip()
        except OSError:
            comm = "?"
        holders.append({"pid": int(pid), "comm": comm, "uses": uses[:5]})
    return holders


def describe_holders(holders: list[dict[str, Any]], submounts: list[MountEntry]) -> str:
    parts = ["pid %d (%s: %s)" % (h["pid"], h["comm"], ", ".join(h["uses"])) for h in holders]
    parts += ["a mount at %s" % m.mount_point for m in submounts]
    return "; ".join(parts) if parts else "no process in this mount namespace was found holding it"


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


# ---------------------------------------------------------------------------
# efs_mount's engine
# ---------------------------------------------------------------------------

MOUNT_HELPERS = ("/sbin/mount.efs", "/usr/sbin/mount.efs")
INSTALL_HINT = "amazon-efs-utils is not installed: dnf install -y amazon-efs-utils"


def default_path(user: str, home: Optional[str]) -> str:
    if not home:
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError:
            home = os.path.join("/home", user)
    return os.path.join(home, "efs")


def resolve_uid(owner: Optional[str]) -> Optional[int]:
    if owner is None:
        return None
    if owner.isdigit():
        return int(owner)
    return pwd.getpwnam(owner).pw_uid


def resolve_gid(group: Optional[str]) -> Optional[int]:
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    return grp.getgrnam(group).gr_gid


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


def observe(path: str, state_dir: str) -> dict[str, Any]:
    """What is at path now: mount (and which file system), plain dir, owner."""
    real = os.path.realpath(path)
    entry = mount_at(read_mountinfo(), real)
    info: dict[str, Any] = {
        "mounted": entry is not None,
        "entry": entry,
        "fs_id": None,
        "identified_by": None,
        "identify_error": None,
        "exists": os.path.lexists(path),
        "owner": None,
        "group": None,
    }
    if entry is not None:
        try:
            info["fs_id"], info["identified_by"] = identify_fs(entry, [path, real], state_dir)
        except IdentifyError as exc:
            info["identify_error"] = str(exc)
    if os.path.isdir(path):
        st = os.stat(path)
        info["owner"], info["group"] = user_name(st.st_uid), group_name(st.st_gid)
    return info


def merged_options(entry: Any) -> str:
    """Per-mount then super-block options, each once."""
    seen: list[str] = []
    for item in (entry.mount_options + "," + entry.super_options).split(","):
        if item and item not in seen:
            seen.append(item)
    return ",".join(seen)


def diff_view(info: dict[str, Any], fstab: Optional[str]) -> dict[str, Any]:
    return {
        "mounted": info["mounted"],
        "fs_id": info["fs_id"],
        "owner": info["owner"],
        "group": info["group"],
        "fstab_line": fstab,
    }


class Mounter:
    """One efs_mount call: observe, decide, act (unless check mode), report."""

    def __init__(self, host: Any, params: dict[str, Any], check: bool, diff: bool) -> None:
        self.host = host
        self.p = params
        self.check = check
        self.diff = diff
        self.path = self.p["path"] or default_path(self.p["user"], self.p["home"])
        if not os.path.isabs(self.path):
            raise EfsError("path %r must be absolute" % self.path)
        self.path = os.path.normpath(self.path)
        if self.path == "/":
            raise EfsError("refusing to mount on or unmount /")
        self.result: dict[str, Any] = {
            "changed": False,
            "path": self.path,
            "mounted_by_this_call": False,
            "unmounted_by_this_call": False,
            "lazy_unmount": False,
            "owner_changed": False,
            "created_mount_point": False,
            "fstab_line": None,
            "fstab_changed": False,
        }

    def fail(self, msg: str, **extra: Any) -> None:
        self.result.update(extra)
        self.result.pop("changed", None)
        raise EfsError(msg, self.result)

    # -- mounted -----------------------------------------------------------

    def ensure_mounted(self, before: dict[str, Any]) -> dict[str, Any]:
        fs_id = self.p["fs_id"]
        if before["mounted"]:
            if before["identify_error"]:
                self.fail(before["identify_error"] + "; refusing to mount %s over it" % fs_id)
            if before["fs_id"] != fs_id:
                self.fail(
                    "%s already has file system %s mounted (source %s); refusing to mount %s over it: "
                    "unmount it first (state: unmounted) or choose another path"
                    % (self.path, before["fs_id"], before["entry"].source, fs_id)
                )
            after = dict(before)
        else:
            self.require_helper()
            self.require_empty_dir()
            self.mount(fs_id)
            after = self.observe_after_mount(fs_id)
        self.ensure_owner(after, just_mounted=not before["mounted"])
        return after

    def require_helper(self) -> None:
        if not any(os.access(h, os.X_OK) for h in MOUNT_HELPERS):
            self.fail(INSTALL_HINT + " (no %s for 'mount -t efs')" % MOUNT_HELPERS[0])

    def require_empty_dir(self) -> None:
        if not os.path.lexists(self.path):
            return
        if not os.path.isdir(self.path):
            self.fail("%s exists and is not a directory; refusing to mount over it" % self.path)
        entries = sorted(os.listdir(self.path))
        if entries:
            self.fail(
                "%s is a non-empty directory that is not a mount point (%d entries, e.g. %s); refusing to "
                "mount over it: move its contents away or choose another path"
                % (self.path, len(entries), ", ".join(entries[:5]))
            )

    def mount(self, fs_id: str) -> None:
        self.result["changed"] = True
        self.result["mounted_by_this_call"] = True
        if not os.path.lexists(self.path):
            self.result["created_mount_point"] = True
            if not self.check:
                os.makedirs(self.path, 0o755)
                self.chown(self.path)
        if self.check:
            return
        argv = ["mount", "-t", "efs", "-o", self.p["options"], fs_id, self.path]
        rc, out, err = self.host.run_command(argv)
        if rc != 0:
            self.result["mounted_by_this_call"] = False
            text = (err or out).strip() or "no output"
            self.fail("mounting %s at %s failed (mount rc %d): %s" % (fs_id, self.path, rc, text))

    def observe_after_mount(self, fs_id: str) -> dict[str, Any]:
        if self.check:
            return {"mounted": True, "entry": None, "fs_id": fs_id, "identified_by": "requested",
                    "identify_error": None, "owner": None, "group": None, "exists": True}
        after = observe(self.path, self.p["state_dir"])
        if not after["mounted"]:
            self.fail("mount reported success but %s is not a mount point afterwards" % self.path)
        if after["identify_error"]:
            self.host.warn(after["identify_error"] + " (just mounted %s there)" % fs_id)
            after["fs_id"], after["identified_by"] = fs_id, "requested"
        elif after["fs_id"] != fs_id:
            self.fail("mounted %s at %s but %s is mounted there now" % (fs_id, self.path, after["fs_id"]))
        return after

    def chown(self, path: str) -> bool:
        uid = self.wanted_uid if self.wanted_uid is not None else -1
        gid = self.wanted_gid if self.wanted_gid is not None else -1
        st = os.stat(path)
        if (uid in (-1, st.st_uid)) and (gid in (-1, st.st_gid)):
            return False
        if not self.check:
            os.chown(path, uid, gid)
        return True

    def ensure_owner(self, after: dict[str, Any], just_mounted: bool) -> None:
        if self.wanted_uid is None and self.wanted_gid is None:
            return
        if self.check and just_mounted:
            # Check mode before mounting: the EFS root's owner is unknown.
            self.result["owner_changed"] = None
        elif self.chown(self.path):
            self.result["owner_changed"] = True
            self.result["changed"] = True
        if self.p["owner"] is not None:
            after["owner"] = user_name(self.wanted_uid)
        if self.p["group"] is not None:
            after["group"] = group_name(self.wanted_gid)

    # -- unmounted ---------------------------------------------------------

    def ensure_unmounted(self, before: dict[str, Any]) -> dict[str, Any]:
        if not before["mounted"]:
            return dict(before, fs_id=None, identified_by=None)
        fs_id = self.p["fs_id"]
        if fs_id and before["identify_error"]:
            self.fail(before["identify_error"] + "; refusing to unmount it as %s" % fs_id)
        if fs_id and before["fs_id"] != fs_id:
            self.fail(
                "%s has file system %s mounted, not %s; refusing to unmount it"
                % (self.path, before["fs_id"], fs_id)
            )
        self.result["changed"] = True
        self.result["unmounted_by_this_call"] = True
        if self.check:
            self.predict_busy()
        else:
            self.unmount()
        return {"mounted": False, "entry": None, "fs_id": None, "identified_by": None,
                "identify_error": None, "owner": None, "group": None, "exists": True}

    def holders(self) -> tuple[list[dict[str, Any]], list[Any]]:
        real = os.path.realpath(self.path)
        return processes_using(real), mounts_below(read_mountinfo(), real)

    def refuse_busy(self, holders: list[dict[str, Any]], submounts: list[Any], detail: str) -> None:
        self.result["unmounted_by_this_call"] = False
        self.fail(
            "%s is busy (%s), held by: %s. Stop those processes (or leave the directory), or set "
            "force: true to detach it lazily (umount -l)"
            % (self.path, detail, describe_holders(holders, submounts)),
            holders=holders,
        )

    def predict_busy(self) -> None:
        holders, submounts = self.holders()
        self.result["holders"] = holders
        if holders or submounts:
            if not self.p["force"]:
                self.refuse_busy(holders, submounts, "check mode")
            self.result["lazy_unmount"] = True

    def unmount(self) -> None:
        rc, out, err = self.host.run_command(["umount", self.path])
        if rc == 0:
            self.result["holders"] = []
            return
        text = (err or out).strip()
        if "busy" not in text.lower():
            self.result["unmounted_by_this_call"] = False
            self.fail("unmounting %s failed (umount rc %d): %s" % (self.path, rc, text or "no output"))
        holders, submounts = self.holders()
        self.result["holders"] = holders
        if not self.p["force"]:
            self.refuse_busy(holders, submounts, text)
        rc, out, err = self.host.run_command(["umount", "-l", self.path])
        if rc != 0:
            self.result["unmounted_by_this_call"] = False
            self.fail("lazy unmount of %s failed (umount -l rc %d): %s" % (self.path, rc, (err or out).strip()))
        self.result["lazy_unmount"] = True

    # -- fstab -------------------------------------------------------------

    def manage_fstab(self, mounted: bool) -> Optional[str]:
        """Returns the line now managed (None when removed or not managed)."""
        if not self.p["fstab"]:
            return None
        line = fstab_line(self.p["fs_id"], self.path, self.p["options"]) if mounted else None
        fstab = self.p["fstab_file"]
        try:
            with open(fstab) as fh:
                old = fh.read()
        except FileNotFoundError:
            old = ""
        new = fstab_update(old, self.path, line)
        if new != old:
            self.result["changed"] = True
            self.result["fstab_changed"] = True
            if not self.check:
                self.host.atomic_move(self.write_temp(new, fstab), fstab)
        self.result["fstab_line"] = line
        return line

    def write_temp(self, text: str, dest: str) -> str:
        tmp = "%s.efs_mount.%d" % (dest, os.getpid())
        with open(tmp, "w") as fh:
            fh.write(text)
        return tmp

    def current_fstab_line(self) -> Optional[str]:
        if not self.p["fstab"]:
            return None
        try:
            with open(self.p["fstab_file"]) as fh:
                lines = fstab_entries_for(fh.read(), self.path)
        except FileNotFoundError:
            return None
        return "\n".join(lines) if lines else None

    # -- main --------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        p = self.p
        if p["state"] == "mounted" and not p["fs_id"]:
            self.fail("fs_id is required with state: mounted")
        if p["fs_id"] and not FS_ID_RE.match(p["fs_id"]):
            self.fail("fs_id %r is not an EFS file system id (fs- followed by hex digits)" % p["fs_id"])
        if not p["options"] or any(c.isspace() for c in p["options"]):
            self.fail("options %r must be a non-empty comma-separated list without spaces" % p["options"])
        try:
            self.wanted_uid = resolve_uid(p["owner"])
            self.wanted_gid = resolve_gid(p["group"])
        except KeyError as exc:
            self.fail("no such user or group on this host: %s" % exc)
        before = observe(self.path, p["state_dir"])
        fstab_before = self.current_fstab_line()
        self.result.update(mounted_before=before["mounted"], fs_id_before=before["fs_id"])
        ensure = self.ensure_mounted if p["state"] == "mounted" else self.ensure_unmounted
        after = ensure(before)
        fstab_after = self.manage_fstab(p["state"] == "mounted")
        return self.report(before, after, fstab_before, fstab_after)

    def report(self, before: dict[str, Any], after: dict[str, Any], fstab_before: Optional[str],
               fstab_after: Optional[str]) -> dict[str, Any]:
        entry = after.get("entry")
        if entry is not None and not self.check:
            # Re-read: chown does not change the mount, but be exact about what is there now.
            entry = mount_at(read_mountinfo(), os.path.realpath(self.path)) or entry
        if not after["mounted"] and os.path.isdir(self.path):
            st = os.stat(self.path)
            after["owner"], after["group"] = user_name(st.st_uid), group_name(st.st_gid)
        self.result.update(
            fs_id=after["fs_id"],
            identified_by=after["identified_by"],
            source=entry.source if entry else None,
            fstype=entry.fstype if entry else None,
            options=merged_options(entry) if entry else None,
            owner=after["owner"],
            group=after["group"],
        )
        if self.diff:
            self.result["diff"] = {
                "before_header": self.path,
                "after_header": self.path,
                "before": diff_view(before, fstab_before if self.p["fstab"] else None),
                "after": diff_view(after, fstab_after if self.p["fstab"] else None),
            }
        return self.result


EFS_MOUNT_ARGS: dict[str, Any] = dict(
    state=dict(type="str", choices=["mounted", "unmounted"], default="mounted"),
    fs_id=dict(type="str"),
    path=dict(type="path"),
    user=dict(type="str", default="ec2-user"),
    home=dict(type="path"),
    options=dict(type="str", default="tls,iam"),
    owner=dict(type="str"),
    group=dict(type="str"),
    force=dict(type="bool", default=False),
    fstab=dict(type="bool", default=False),
    fstab_file=dict(type="path", default="/etc/fstab"),
    state_dir=dict(type="path", default="/var/run/efs"),
)


def with_defaults(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """params completed with the spec's defaults (for callers that are not
    the module itself, e.g. a module doing several steps in one session)."""
    unknown = set(params) - set(spec)
    if unknown:
        raise EfsError("unknown parameters: %s" % ", ".join(sorted(unknown)))
    out = {name: opts.get("default") for name, opts in spec.items()}
    out.update(params)
    return out


def run_efs_mount(host: Any, params: dict[str, Any], check: bool = False, diff: bool = False) -> dict[str, Any]:
    """Do what efs_mount does and return its result dict. host provides
    run_command(argv), warn(msg) and atomic_move(src, dest) (an
    AnsibleModule does); params are efs_mount's (see with_defaults).
    Raises EfsError (message plus the partial result) on failure."""
    return Mounter(host, params, check, diff).run()


# ---------------------------------------------------------------------------
# Releases area
# ---------------------------------------------------------------------------

HISTORY = "history.json"
LOCK = ".lock"
RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
RENAME_EXCHANGE = 2
AT_FDCWD = -100


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


def target_key(target: str) -> str:
    """Directory name of a target's releases: the target path with '%'
    and '/' percent-encoded (so distinct targets never share a name, e.g.
    'data/reefguide' -> 'data%2Freefguide'). Over-long names are cut and
    suffixed with a hash."""
    key = safe_relpath(target, "target").replace("%", "%25").replace("/", "%2F")
    if len(os.fsencode(key)) > 200:
        import hashlib

        digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:16]
        key = os.fsdecode(os.fsencode(key)[:150]).rstrip("%") + "~" + digest
    return key


def key_to_target(key: str) -> str:
    return key.replace("%2F", "/").replace("%25", "%")


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


def is_real_dir(path: str) -> bool:
    """A directory that is not a symlink."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


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


def remove_tree(root: str, path: str, dry_run: bool = False) -> int:
    """Delete path (a directory or file below root, never root itself) and
    return the bytes it held. Refuses anything that resolves outside root;
    a symlink is removed as a link, never followed (shutil.rmtree does not
    follow links inside the tree either)."""
    if not os.path.lexists(path):
        return 0
    resolved = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    if not is_within(root, os.path.dirname(path)) or resolved == os.path.realpath(root):
        raise ReleaseError("refusing to delete %s: it is not below %s" % (path, root))
    if os.path.islink(path) or not os.path.isdir(path):
        size = os.lstat(path).st_size if not os.path.islink(path) else 0
        if not dry_run:
            os.unlink(path)
        return size
    _files, size = tree_size(path)
    if not dry_run:
        shutil.rmtree(path)
    return size


def prune_plan(releases: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The releases beyond the newest keep."""
    if keep < 0:
        raise ReleaseError("keep must be 0 or more, got %d" % keep)
    return releases[keep:]


def prune_releases(
    root: str, key_dir: str, history: dict[str, Any], keep: int, dry_run: bool = False
) -> dict[str, Any]:
    """Delete one target's releases beyond keep; updates history in memory
    (the caller saves it). Returns {pruned: [ids], bytes_freed}."""
    doomed = prune_plan(list_releases(key_dir, history), keep)
    freed = 0
    for rel in doomed:
        freed += remove_tree(root, rel["path"], dry_run)
    ids = [rel["release_id"] for rel in doomed]
    if not dry_run:
        history["releases"] = [r for r in history.get("releases", []) if r.get("release_id") not in ids]
    return {"pruned": ids, "bytes_freed": freed}


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


# ---------------------------------------------------------------------------
# efs_release's engine
# ---------------------------------------------------------------------------

CACHE_REL = "data/reefguide/cache"


def overlaps(a: str, b: str) -> bool:
    """One relative path equals or contains the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def default_preserve(target_rel: str) -> list[str]:
    if CACHE_REL.startswith(target_rel + "/"):
        return [CACHE_REL[len(target_rel) + 1:]]
    return []


def cache_inside(target_rel: str) -> Optional[str]:
    """data/reefguide/cache relative to the target, if the target holds it."""
    return CACHE_REL[len(target_rel) + 1:] if CACHE_REL.startswith(target_rel + "/") else None


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


def size_without(top: str, entries: list[str]) -> int:
    """Bytes under top, not counting the given entries (paths relative to top)."""
    size = tree_size(top)[1]
    for entry in entries:
        path = os.path.join(top, *entry.split("/"))
        if os.path.lexists(path) and not os.path.islink(path):
            size -= tree_size(path)[1] if os.path.isdir(path) else os.lstat(path).st_size
    return size


def nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


class Release:
    """One efs_release call on one target."""

    def __init__(self, host: Any, params: dict[str, Any], check: bool, diff: bool, root: str,
                 target_rel: str) -> None:
        self.host = host
        self.p = params
        self.check = check
        self.diff = diff
        self.root = root
        self.target_rel = target_rel
        self.target = os.path.join(root, *target_rel.split("/"))
        self.releases_rel = safe_relpath(self.p["releases_dir"], "releases_dir")
        self.key_dir = os.path.join(root, *self.releases_rel.split("/"), target_key(target_rel))
        self.staging_rel: Optional[str] = None
        self.staging: Optional[str] = None
        if self.p["staging"]:
            self.staging_rel = safe_relpath(self.p["staging"], "staging")
            self.staging = os.path.join(root, *self.staging_rel.split("/"))
        preserve = self.p["preserve"]
        if preserve is None:
            preserve = default_preserve(target_rel)
        self.preserve = [safe_relpath(e, "preserve entry") for e in preserve]
        self.cache_rel = cache_inside(target_rel)
        self.uid, self.gid = resolve_owner(self.p["owner"], self.p["group"])
        self.history: dict[str, Any] = {}
        self.lock_fd: Optional[int] = None
        self.kept_after: Optional[list[str]] = None
        self._nested: Optional[list[str]] = None
        self.result: dict[str, Any] = {
            "changed": False,
            "target_path": self.target,
            "releases_path": self.key_dir,
            "swap_method": None,
            "preserved": [],
            "pruned": [],
            "bytes_freed": 0,
            "recovered": None,
        }
        if self.staging:
            self.result["staging_path"] = self.staging
        self.check_layout()

    # -- validation ----------------------------------------------------------

    def check_layout(self) -> None:
        names = {"target": self.target_rel, "releases_dir": self.releases_rel}
        if self.staging_rel:
            names["staging"] = self.staging_rel
        items = list(names.items())
        for i, (name_a, rel_a) in enumerate(items):
            for name_b, rel_b in items[i + 1:]:
                if overlaps(rel_a, rel_b):
                    raise ReleaseError("%s %r and %s %r overlap: they must be separate directories under %s"
                                       % (name_a, rel_a, name_b, rel_b, self.root))
        for what, path in (("target", self.target), ("releases_dir", self.key_dir), ("staging", self.staging)):
            if path is None:
                continue
            if not parents_within(self.root, path):
                raise ReleaseError("%s %s leads outside %s through a symlink; refusing" % (what, path, self.root))
            if os.path.islink(path):
                raise ReleaseError("%s %s is a symlink; efs_release moves real directories and will not follow it"
                                   % (what, path))
            if os.path.lexists(path) and not os.path.isdir(path):
                raise ReleaseError("%s %s exists and is not a directory" % (what, path))
        releases_root = os.path.dirname(self.key_dir)
        if os.path.islink(releases_root):
            raise ReleaseError("releases_dir %s is a symlink; refusing" % releases_root)
        devices = {os.lstat(nearest_existing(p)).st_dev for p in (self.target, self.key_dir, self.staging) if p}
        if len(devices) > 1:
            raise ReleaseError("target, staging and releases_dir must be on one file system (renames are used); "
                               "they are not under %s" % self.root)

    # -- locking, journal ----------------------------------------------------

    def open(self) -> None:
        """Create the releases directory, lock it, load and repair history."""
        if not self.check:
            # Only a release needs to create the releases directory; a
            # rollback or prune of a target that has none has nothing to do.
            if self.p["state"] == "released":
                self.make_dirs(self.key_dir)
            if os.path.isdir(self.key_dir):
                self.lock()
        self.history = load_history(self.key_dir, self.target_rel)
        if self.history.get("pending"):
            self.result["recovered"] = self.recover()

    def lock(self) -> None:
        """Serialise runs on this target; wait at most lock_timeout seconds."""
        path = os.path.join(self.key_dir, LOCK)
        self.lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.p["lock_timeout"]
        while True:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    self.unlock()
                    raise ReleaseError("another efs_release run holds the lock on %s (%s) after %ds; wait for it "
                                       "to finish (a dead run's lock goes away with its process)"
                                       % (self.target_rel, path, self.p["lock_timeout"])) from exc
            time.sleep(0.5)

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def make_dirs(self, path: str) -> None:
        """mkdir -p within root, owned as asked."""
        missing = []
        while not os.path.lexists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for new in reversed(missing):
            if not parents_within(self.root, new):
                raise ReleaseError("%s would be created outside %s; refusing" % (new, self.root))
            os.mkdir(new, 0o755)
            if self.uid is not None or self.gid is not None:
                os.chown(new, -1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid)

    def recover(self) -> str:
        """Complete or undo a swap that an earlier run started (journal in
        history['pending']); the inode numbers tell which version is where."""
        pend = self.history["pending"]
        incoming = os.path.join(self.root, *pend["incoming_path"].split("/"))
        retire = os.path.join(self.key_dir, pend["outgoing_id"]) if pend.get("outgoing_id") else None
        t_ino, i_ino = ino(self.target), ino(incoming)
        r_ino = ino(retire) if retire else None
        new, old = pend["incoming_ino"], pend.get("outgoing_ino")
        self.result["changed"] = True
        if self.check:
            return "an interrupted %s of %s would be repaired first (check mode plans nothing further)" % (
                pend["op"], pend["incoming_id"])
        if t_ino == new:
            if old is not None and i_ino == old:
                os.rename(incoming, retire)
            self.finish(pend)
            return "completed the interrupted %s of %s" % (pend["op"], pend["incoming_id"])
        if t_ino is None and i_ino == new and (old is None or r_ino == old):
            self.make_dirs(os.path.dirname(self.target))
            os.rename(incoming, self.target)
            self.finish(pend)
            return "completed the interrupted %s of %s" % (pend["op"], pend["incoming_id"])
        if (old is not None and t_ino == old) or (old is None and t_ino is None):
            for entry in pend.get("moved", []):
                src = os.path.join(incoming, *entry.split("/"))
                dst = os.path.join(self.target, *entry.split("/"))
                if os.path.lexists(src) and not os.path.lexists(dst):
                    os.rename(src, dst)
            del self.history["pending"]
            save_history(self.key_dir, self.history)
            return "undid the interrupted %s of %s (nothing had been swapped)" % (pend["op"], pend["incoming_id"])
        raise ReleaseError(
            "an interrupted %s of %s left %s, %s and %s in a state this module cannot repair; check them by hand "
            "and remove 'pending' from %s/history.json" % (pend["op"], pend["incoming_id"], self.target, incoming,
                                                           retire, self.key_dir))

    def finish(self, pend: dict[str, Any]) -> None:
        self.history["live"] = pend["live_after"]
        kept = [r for r in self.history["releases"] if r.get("release_id") != pend["incoming_id"]]
        if pend.get("retired"):
            kept = [pend["retired"]] + [r for r in kept if r.get("release_id") != pend["retired"]["release_id"]]
        self.history["releases"] = kept
        self.history.pop("pending", None)
        save_history(self.key_dir, self.history)

    # -- what is live --------------------------------------------------------

    def live(self) -> Optional[dict[str, Any]]:
        """The recorded live release, if the target is still that directory."""
        live = self.history.get("live")
        if not live or not os.path.lexists(self.target):
            return None
        if live.get("ino") is not None and live["ino"] != ino(self.target):
            self.host.warn("%s was replaced outside efs_release since release %s; it is kept as an unrecorded "
                             "version" % (self.target, live["release_id"]))
            return None
        return live

    def taken_ids(self) -> set[str]:
        ids = {r["release_id"] for r in list_releases(self.key_dir, self.history)}
        ids |= {r.get("release_id") for r in self.history.get("releases", [])}
        if self.history.get("live"):
            ids.add(self.history["live"]["release_id"])
        return ids

    def free_id(self, base: str) -> str:
        taken = self.taken_ids()
        rid, n = base, 1
        while rid in taken or os.path.lexists(os.path.join(self.key_dir, rid)):
            n += 1
            rid = "%s-%d" % (base, n)
        return rid

    def outgoing_meta(self, live: Optional[dict[str, Any]], moved: list[str]) -> Optional[dict[str, Any]]:
        """Metadata of the version about to be retired (None if no target)."""
        if not os.path.lexists(self.target):
            return None
        if live:
            meta = dict(live)
        else:
            files = tree_size(self.target)[0] - sum(tree_size(os.path.join(self.target, *e.split("/")))[0]
                                                   for e in moved)
            size = size_without(self.target, moved)
            meta = {"release_id": self.free_id("unrecorded-" + timestamp_id()), "released_at": None,
                    "files": files, "bytes": size, "source": "found"}
        meta.pop("ino", None)
        meta["retired_at"] = utc_now()
        return meta

    # -- preserved entries ---------------------------------------------------

    def plan_carry(self, outgoing: Optional[str], incoming: str, out_id: Optional[str],
                   in_id: str) -> list[dict[str, Any]]:
        steps = []
        entries = list(self.preserve)
        for entry in self.nested_targets():
            if entry not in entries and not any(entry.startswith(e + "/") for e in self.preserve):
                entries.append(entry)
        if self.cache_rel and self.cache_rel not in entries:
            entries.append(self.cache_rel)
        nested = self.nested_targets()
        for entry in entries:
            src = os.path.join(outgoing, *entry.split("/")) if outgoing else None
            dst = os.path.join(incoming, *entry.split("/"))
            for base, path in ((outgoing, src), (incoming, dst)):
                if path and not parents_within(base, path):
                    raise ReleaseError("preserve entry %r leads outside its version through a symlink (%s)"
                                       % (entry, path))
            src_there = bool(src) and os.path.lexists(src)
            dst_state = entry_state(dst)
            preserved = entry in self.preserve
            if entry in nested and src_there and not preserved:
                if dst_state == "present":
                    raise ReleaseError(
                        "%s already has %r, which is released separately as target %s/%s (efs_release carries it "
                        "over): remove it from the staged version, or release it as its own target"
                        % (incoming, entry, self.target_rel, entry))
                action = "moved"
            elif preserved and self.p["preserve_mode"] == "move" and src_there:
                if dst_state == "present":
                    raise ReleaseError(
                        "%s already has %r (not empty), and preserve would move %s there: remove it from the "
                        "staged version or leave it out of preserve" % (incoming, entry, src))
                action = "moved"
            elif dst_state != "absent":
                action = "kept_incoming"
            elif entry == self.cache_rel or (preserved and src_there and is_real_dir(src)):
                action = "created_empty"
            else:
                action = "absent"
            steps.append({"entry": entry, "action": action, "from": out_id if action == "moved" else None,
                          "to": in_id, "_src": src, "_dst": dst, "_dst_state": dst_state})
        return steps

    def nested_targets(self) -> list[str]:
        """Targets released separately below this one (e.g. data packages
        under data/reefguide), relative to it: they are carried over like
        preserved entries so releasing the parent does not retire them."""
        if self._nested is None:
            self._nested = nested_release_targets(os.path.dirname(self.key_dir), self.target_rel)
        return self._nested

    def do_carry(self, steps: list[dict[str, Any]], incoming: str) -> None:
        for step in steps:
            src, dst = step["_src"], step["_dst"]
            if step["action"] == "moved":
                if step["_dst_state"] == "empty_dir":
                    os.rmdir(dst)
                self.make_dirs_in(incoming, os.path.dirname(dst))
                os.rename(src, dst)
            elif step["action"] == "created_empty":
                self.make_dirs_in(incoming, os.path.dirname(dst))
                os.mkdir(dst)
                like = src if src and is_real_dir(src) else incoming
                st = os.stat(like)
                os.chown(dst, st.st_uid, st.st_gid)
                os.chmod(dst, stat.S_IMODE(st.st_mode))

    def make_dirs_in(self, base: str, path: str) -> None:
        missing = []
        while not os.path.lexists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for new in reversed(missing):
            if not parents_within(base, new):
                raise ReleaseError("%s would be created outside %s; refusing" % (new, base))
            os.mkdir(new, 0o755)

    def report_carry(self, steps: list[dict[str, Any]]) -> None:
        self.result["preserved"] = [{k: v for k, v in s.items() if not k.startswith("_")} for s in steps]
        if self.cache_rel:
            action = next(s["action"] for s in steps if s["entry"] == self.cache_rel)
            self.result["cache"] = {"path": os.path.join(self.target, *self.cache_rel.split("/")), "action": action}

    # -- ownership -----------------------------------------------------------

    def chown_tree(self, top: str) -> int:
        """lchown entries under top that differ from owner/group; count them."""
        if self.uid is None and self.gid is None:
            return 0
        count = 0
        for dirpath, dirnames, filenames in os.walk(top):
            for path in [dirpath] + [os.path.join(dirpath, n) for n in filenames + dirnames
                                     if os.path.islink(os.path.join(dirpath, n))
                                     or not os.path.isdir(os.path.join(dirpath, n))]:
                st = os.lstat(path)
                uid = st.st_uid if self.uid is None else self.uid
                gid = st.st_gid if self.gid is None else self.gid
                if (uid, gid) != (st.st_uid, st.st_gid):
                    count += 1
                    if not self.check:
                        os.lchown(path, uid, gid)
        return count

    # -- the swap ------------------------------------------------------------

    def swap(self, incoming: str, retire_to: Optional[str]) -> str:
        if not os.path.lexists(self.target):
            self.make_dirs(os.path.dirname(self.target))
            os.rename(incoming, self.target)
            return "rename"
        if self.p["swap"] != "rename":
            if rename_exchange(incoming, self.target):
                os.rename(incoming, retire_to)  # incoming's path now holds the outgoing version
                return "exchange"
            if self.p["swap"] == "exchange":
                raise ReleaseError("this file system does not support renameat2(RENAME_EXCHANGE) (NFS/EFS does not); "
                                   "use swap: auto or rename")
        os.rename(self.target, retire_to)
        os.rename(incoming, self.target)
        return "two_renames"

    def predicted_swap(self) -> str:
        if not os.path.lexists(self.target):
            return "rename"
        return "two_renames" if self.p["swap"] == "rename" else "exchange"

    def journal(self, op: str, incoming: str, in_id: str, retired: Optional[dict[str, Any]],
                live_after: dict[str, Any], moved: list[str]) -> dict[str, Any]:
        pend = {
            "op": op,
            "incoming_id": in_id,
            "incoming_path": os.path.relpath(incoming, self.root),
            "incoming_ino": ino(incoming),
            "outgoing_id": retired["release_id"] if retired else None,
            "outgoing_ino": ino(self.target),
            "retired": retired,
            "live_after": dict(live_after, ino=ino(incoming)),
            "moved": moved,
            "started_at": utc_now(),
        }
        self.history["pending"] = pend
        save_history(self.key_dir, self.history)
        return pend

    # -- release -------------------------------------------------------------

    def plan_outgoing(self, live: Optional[dict[str, Any]], incoming: str,
                      in_id: str) -> tuple[Optional[dict[str, Any]], Optional[str], list[dict[str, Any]]]:
        """The version to retire (metadata, id) and the carry plan into incoming."""
        outgoing = self.target if os.path.lexists(self.target) else None
        steps = self.plan_carry(outgoing, incoming, None, in_id)
        retired = self.outgoing_meta(live, [s["entry"] for s in steps if s["action"] == "moved"])
        out_id = retired["release_id"] if retired else None
        for step in steps:
            if step["action"] == "moved":
                step["from"] = out_id
        return retired, out_id, steps

    def release(self) -> None:
        if not self.staging:
            raise ReleaseError("staging is required with state: released")
        live = self.live()
        if not os.path.lexists(self.staging):
            self.already_released(live)
            return
        wanted = self.p["release_id"]
        if wanted:
            check_release_id(wanted)
            if wanted in self.taken_ids():
                raise ReleaseError("release_id %s is already used for %s (live or kept); choose another"
                                   % (wanted, self.target_rel))
        new_id = wanted or self.free_id(timestamp_id())
        retired, out_id, steps = self.plan_outgoing(live, self.staging, new_id)
        moved_entries = [s["entry"] for s in steps if s["action"] == "moved"]
        files, size = tree_size(self.staging)
        live_after = {"release_id": new_id, "released_at": utc_now(), "files": files, "bytes": size,
                      "source": "staging", "staging": self.staging_rel}
        kept_before = [r["release_id"] for r in list_releases(self.key_dir, self.history)]
        kept = ([out_id] if out_id else []) + kept_before
        doomed = kept[self.p["keep"]:]
        self.result.update(changed=True, release_id=new_id, previous_release_id=out_id)
        self.set_diff(live, new_id, kept_before, kept[: self.p["keep"]], doomed)
        if self.check:
            self.report_carry(steps)
            self.result["swap_method"] = self.predicted_swap()
            self.result["pruned"] = self.predict_prune(doomed, out_id, moved_entries)
            self.result["chowned"] = self.chown_tree(self.staging)
        else:
            self.result["chowned"] = self.chown_tree(self.staging)
            moved = [s["entry"] for s in steps if s["action"] == "moved"]
            self.journal("release", self.staging, new_id, retired, live_after, moved)
            self.do_carry(steps, self.staging)
            self.report_carry(steps)
            retire_to = os.path.join(self.key_dir, out_id) if out_id else None
            self.result["swap_method"] = self.swap(self.staging, retire_to)
            self.finish(self.history["pending"])
            remove_empty_parents(self.root, self.staging)
            self.prune()
        self.result["msg"] = "%s %s live at %s%s (swap: %s)" % (
            "would make" if self.check else "made", new_id, self.target_rel,
            (", keeping %s as a release" % out_id) if out_id else "", self.result["swap_method"])

    def already_released(self, live: Optional[dict[str, Any]]) -> None:
        wanted = self.p["release_id"]
        same = live is not None and (
            live["release_id"] == wanted if wanted else
            (live.get("source") == "staging" and live.get("staging") == self.staging_rel))
        if not same:
            raise ReleaseError("staging directory %s does not exist: nothing to release to %s%s" % (
                self.staging, self.target_rel,
                (" (live release: %s)" % live["release_id"]) if live else ""))
        self.result.update(release_id=live["release_id"], previous_release_id=self.previous_id())
        self.ensure_cache_only()
        kept = [r["release_id"] for r in list_releases(self.key_dir, self.history)]
        self.set_diff(live, live["release_id"], kept, kept[: self.p["keep"]], kept[self.p["keep"]:])
        if self.check:
            self.result["pruned"] = self.predict_prune(kept[self.p["keep"]:], None, [])
            self.result["changed"] = self.result["changed"] or bool(self.result["pruned"])
        else:
            self.prune()
        self.result["msg"] = "%s is already live at %s" % (live["release_id"], self.target_rel)

    def ensure_cache_only(self) -> None:
        """The cache must exist even when nothing is released."""
        if not self.cache_rel:
            return
        path = os.path.join(self.target, *self.cache_rel.split("/"))
        if entry_state(path) != "absent":
            self.result["cache"] = {"path": path, "action": "unchanged"}
            return
        self.result["changed"] = True
        self.result["cache"] = {"path": path, "action": "created_empty"}
        if not self.check:
            self.make_dirs_in(self.target, os.path.dirname(path))
            os.mkdir(path)
            st = os.stat(self.target)
            os.chown(path, st.st_uid, st.st_gid)

    # -- rollback ------------------------------------------------------------

    def previous_id(self) -> Optional[str]:
        kept = list_releases(self.key_dir, self.history)
        return kept[0]["release_id"] if kept else None

    def rollback(self) -> None:
        live = self.live()
        kept = list_releases(self.key_dir, self.history)
        wanted = self.p["release_id"]
        if wanted:
            check_release_id(wanted)
        if live and (wanted == live["release_id"] or (not wanted and live.get("source") == "rollback")):
            self.result.update(release_id=live["release_id"], previous_release_id=self.previous_id())
            self.ensure_cache_only()
            self.result["msg"] = "%s is already live at %s%s" % (
                live["release_id"], self.target_rel,
                "" if wanted else " from a rollback (give release_id to roll back further or forward)")
            return
        if not kept and not wanted:
            raise ReleaseError("no previous release of %s to roll back to (releases area %s is empty)"
                               % (self.target_rel, self.key_dir))
        chosen = kept[0] if not wanted else next((r for r in kept if r["release_id"] == wanted), None)
        if chosen is None:
            raise ReleaseError("release %s of %s is not kept; kept releases: %s"
                               % (wanted, self.target_rel, ", ".join(r["release_id"] for r in kept) or "none"))
        in_id = chosen["release_id"]
        incoming = chosen["path"]
        retired, out_id, steps = self.plan_outgoing(live, incoming, in_id)
        live_after = {k: v for k, v in chosen.items() if k not in ("path", "retired_at")}
        live_after.update(source="rollback", rolled_back_from=out_id, live_since=utc_now())
        names = [r["release_id"] for r in kept]
        after_kept = ([out_id] if out_id else []) + [n for n in names if n != in_id]
        self.result.update(changed=True, release_id=in_id, previous_release_id=out_id)
        self.set_diff(live, in_id, names, after_kept, [])
        if self.check:
            self.report_carry(steps)
            self.result["swap_method"] = self.predicted_swap()
        else:
            moved = [s["entry"] for s in steps if s["action"] == "moved"]
            self.journal("rollback", incoming, in_id, retired, live_after, moved)
            self.do_carry(steps, incoming)
            self.report_carry(steps)
            retire_to = os.path.join(self.key_dir, out_id) if out_id else None
            self.result["swap_method"] = self.swap(incoming, retire_to)
            self.finish(self.history["pending"])
        self.result["msg"] = "%s %s back at %s%s" % (
            "would put" if self.check else "put", in_id, self.target_rel,
            (", keeping %s as a release" % out_id) if out_id else "")

    # -- pruning -------------------------------------------------------------

    def predict_prune(self, doomed: list[str], not_yet_retired: Optional[str],
                      moved: list[str]) -> list[dict[str, Any]]:
        """Check mode: what prune() will delete; the version this call
        retires is still at the target, less the entries that move out."""
        out = []
        for rid in doomed:
            if rid == not_yet_retired:
                size = size_without(self.target, moved)
            else:
                size = tree_size(os.path.join(self.key_dir, rid))[1]
            out.append({"target": self.target_rel, "release_id": rid, "bytes": size})
        self.result["bytes_freed"] += sum(d["bytes"] for d in out)
        return out

    def prune(self) -> None:
        kept = list_releases(self.key_dir, self.history)
        doomed = prune_plan(kept, self.p["keep"])
        sizes = {r["release_id"]: tree_size(r["path"])[1] for r in doomed}
        if self.check:
            self.result["pruned"] = [{"target": self.target_rel, "release_id": rid, "bytes": sizes[rid]}
                                     for rid in sizes]
            self.result["bytes_freed"] += sum(sizes.values())
        else:
            done = prune_releases(self.root, self.key_dir, self.history, self.p["keep"])
            if done["pruned"]:
                save_history(self.key_dir, self.history)
            self.result["pruned"] = [{"target": self.target_rel, "release_id": rid, "bytes": sizes.get(rid, 0)}
                                     for rid in done["pruned"]]
            self.result["bytes_freed"] += done["bytes_freed"]
        if self.result["pruned"]:
            self.result["changed"] = True

    def pruned_state(self) -> None:
        live = self.live()
        kept = [r["release_id"] for r in list_releases(self.key_dir, self.history)]
        self.set_diff(live, live["release_id"] if live else None, kept, kept[: self.p["keep"]],
                      kept[self.p["keep"]:])
        self.prune()
        self.result.update(release_id=live["release_id"] if live else None,
                           previous_release_id=(self.kept_after or [None])[0])
        self.result["msg"] = "%s %d old release(s) of %s" % (
            "would prune" if self.check else "pruned", len(self.result["pruned"]), self.target_rel)

    # -- reporting -----------------------------------------------------------

    def set_diff(self, live: Optional[dict[str, Any]], new_live: Optional[str], kept_before: list[str],
                 kept_after: list[str], doomed: list[str]) -> None:
        """Record the planned outcome (kept_after) and, with --diff, show it."""
        self.kept_after = kept_after
        if not self.diff:
            return

        def text(live_id: Optional[str], kept: list[str], pruned: Optional[list[str]]) -> str:
            lines = ["live: %s" % (live_id or "-"), "kept releases: %s" % (", ".join(kept) or "-")]
            if pruned:
                lines.append("pruned: %s" % ", ".join(pruned))
            return "\n".join(lines) + "\n"

        self.result["diff"] = {
            "before_header": "%s (%s)" % (self.target_rel, self.target),
            "after_header": "%s (%s)" % (self.target_rel, self.target),
            "before": text(live["release_id"] if live else None, kept_before, None),
            "after": text(new_live, kept_after, doomed),
        }

    def finalize(self) -> dict[str, Any]:
        self.unlock()
        if self.check and self.kept_after is not None:
            names = self.kept_after
        else:
            names = [r["release_id"] for r in list_releases(self.key_dir, self.history)]
        self.result["releases"] = names
        prev = self.result.get("previous_release_id")
        self.result["rollback"] = (
            "state: rolled_back, root: %s, target: %s (restores %s)" % (self.root, self.target_rel, prev)
            if prev else "no previous release of %s is kept: nothing to roll back to" % self.target_rel)
        return self.result


def resolve_owner(owner: Optional[str], group: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    try:
        uid = None if owner is None else (int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid)
        gid = None if group is None else (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
    except KeyError as exc:
        raise ReleaseError("no such user or group on this host: %s" % exc) from exc
    return uid, gid


def run_target(host: Any, params: dict[str, Any], check: bool, diff: bool, root: str,
               target_rel: str) -> dict[str, Any]:
    """One target: release, roll back or prune (params['state'])."""
    rel = Release(host, params, check, diff, root, target_rel)
    try:
        rel.open()
        state = params["state"]
        if rel.result["recovered"] and check:
            rel.result["msg"] = rel.result["recovered"]
        elif state == "released":
            rel.release()
        elif state == "rolled_back":
            rel.rollback()
        else:
            rel.pruned_state()
        return rel.finalize()
    finally:
        rel.unlock()


def staging_leftover(params: dict[str, Any], root: str, protect: list[str]) -> Optional[str]:
    """state=pruned: the validated staging leftover to delete, if given."""
    if not params["staging"]:
        return None
    staging_rel = safe_relpath(params["staging"], "staging")
    for other in protect:
        if overlaps(staging_rel, other):
            raise ReleaseError("staging %r overlaps %r; refusing to delete it" % (staging_rel, other))
    staging = os.path.join(root, *staging_rel.split("/"))
    if not parents_within(root, staging):
        raise ReleaseError("staging %s leads outside %s through a symlink; refusing" % (staging, root))
    return staging


def prune_state(host: Any, p: dict[str, Any], check: bool, diff: bool, root: str) -> dict[str, Any]:
    """state=pruned: the named target, or every target in the releases
    area, then the staging leftover if given. Teardown uses this."""
    releases_rel = safe_relpath(p["releases_dir"], "releases_dir")
    releases_root = os.path.join(root, *releases_rel.split("/"))
    if not parents_within(root, releases_root) or os.path.islink(releases_root):
        raise ReleaseError("releases_dir %s leads outside %s or is a symlink; refusing" % (releases_root, root))
    if p["target"] is not None:
        targets = [safe_relpath(p["target"], "target")]
    else:
        targets = [load_history(os.path.join(releases_root, key), key_to_target(key)).get("target")
                   for key in target_keys(releases_root)]
    leftover = staging_leftover(p, root, targets + [releases_rel])
    result: dict[str, Any] = {"changed": False, "pruned": [], "bytes_freed": 0, "swap_method": None}
    recovered = []
    for target_rel in targets:
        one = run_target(host, p, check, diff, root, target_rel)
        if p["target"] is not None:
            result = one
        else:
            result["pruned"] += one["pruned"]
            result["bytes_freed"] += one["bytes_freed"]
            result["changed"] = result["changed"] or one["changed"]
        if one["recovered"]:
            recovered.append("%s: %s" % (target_rel, one["recovered"]))
    result["recovered"] = "; ".join(recovered) or None
    result["staging_removed"] = False
    if leftover:
        result["staging_path"] = leftover
        if os.path.lexists(leftover):
            result["bytes_freed"] += remove_tree(root, leftover, dry_run=check)
            result["staging_removed"] = True
            result["changed"] = True
    result["msg"] = "%s %d old release(s) of %d target(s)%s, %d bytes" % (
        "would prune" if check else "pruned", len(result["pruned"]), len(targets),
        " and the staging leftover" if result["staging_removed"] else "", result["bytes_freed"])
    return result


EFS_RELEASE_ARGS: dict[str, Any] = dict(
    root=dict(type="path", required=True),
    target=dict(type="str"),
    staging=dict(type="str"),
    state=dict(type="str", choices=["released", "rolled_back", "pruned"], default="released"),
    keep=dict(type="int", default=2),
    release_id=dict(type="str"),
    releases_dir=dict(type="str", default=".reefguide-releases"),
    preserve=dict(type="list", elements="str"),
    preserve_mode=dict(type="str", choices=["move", "fresh"], default="move"),
    owner=dict(type="str"),
    group=dict(type="str"),
    swap=dict(type="str", choices=["auto", "exchange", "rename"], default="auto"),
    lock_timeout=dict(type="int", default=600),
)
EFS_RELEASE_REQUIRED_IF = [("state", "released", ("target", "staging")), ("state", "rolled_back", ("target",))]


def run_efs_release(host: Any, params: dict[str, Any], check: bool = False, diff: bool = False) -> dict[str, Any]:
    """Do what efs_release does and return its result dict. host provides
    warn(msg) (an AnsibleModule does); params are efs_release's (see
    with_defaults). Raises ReleaseError or UnsafePathError; an OSError is
    turned into a ReleaseError naming the path."""
    if params["keep"] < 0:
        raise ReleaseError("keep must be 0 or more, got %d" % params["keep"])
    for key, value, needed in EFS_RELEASE_REQUIRED_IF:
        if params[key] == value and not all(params.get(n) for n in needed):
            raise ReleaseError("%s: %s needs %s" % (key, value, " and ".join(needed)))
    root = os.path.realpath(params["root"])
    if not os.path.isdir(root):
        raise ReleaseError("root %s is not a directory: is the EFS file system mounted (efs_mount)?" % params["root"])
    try:
        if params["state"] == "pruned":
            return prune_state(host, params, check, diff, root)
        return run_target(host, params, check, diff, root, safe_relpath(params["target"], "target"))
    except OSError as exc:
        raise ReleaseError("%s: %s (%s)" % (exc.strerror, exc.filename, type(exc).__name__)) from exc
