# Who holds a mount: the processes (in this mount namespace) whose cwd, root, open or mapped
# files lie under it, read from /proc, so a refused unmount can name them. Read-only.

from __future__ import annotations

import os
from typing import Any, Optional

from ansible.module_utils.reefguide.mount_table import MountEntry


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

