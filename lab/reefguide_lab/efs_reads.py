"""How many bytes the lab's EFS was read, through the instance's EFS mount only.

On AWS an EFS read costs burst credits and, for files in Infrequent Access, a
per-GB charge; the project must read only what changed. The lab tells them
apart from metadata work by the files' access times:

* the lab's storage (<lab>/efs) is a bind mount of itself with `noatime`,
  so the host's reads (tests comparing bytes, the benchmark) leave atimes
  alone; worker stand-ins mount it `noatime` too;
* the instance's EFS mount (lab/sbin/mount.efs) is `strictatime`: every
  read through it moves the file's atime; stat, listings, links, renames
  and writes do not;
* a snapshot {inode: atime} of the storage is taken at each accounting
  point (an SSM session's start and end, `labctl efs-reads`, `labctl
  status`); a regular file whose atime moved since the snapshot counts its
  size as read (once per inode, however many hard links and reads). A file
  new since the snapshot counts when its atime is past its ctime by more
  than a clock tick (its creation, writes, utime and rename all set ctime;
  only a read moves atime past it).

So a figure is "bytes of the files read between two points"; a partial read
counts the whole file. Not seen: a file read and then deleted or replaced by
another inode before the next point (its atime goes with it): the pull's
checksum cache is one (read as the pull starts, replaced when it is saved), so
its size is in the pull's own result (local_read.checksum_cache_bytes). Reads are attributed to the total since the last
reset and to every SSM session open at the time (labd calls
session_started / session_ended).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from .state import lab_dir

# File timestamps come from the kernel's coarse clock (a tick of 4-10 ms) while
# utime() may set atime from the precise one: a new file's atime can be up to a tick
# past its ctime without any read.
TICK_NS = 20_000_000
PATHS_KEPT = 200  # paths listed per total / per session (the biggest reads)
SESSIONS_KEPT = 50


def storage() -> Path:
    return lab_dir() / "efs"


def ledger_path() -> Path:
    return lab_dir() / "efs-reads.json"


def snapshot_path() -> Path:
    return lab_dir() / "efs-reads-snapshot.json"


# -- the storage's mount ------------------------------------------------------------------------
def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh if len(line.split()) > 4)


def guard_storage() -> None:
    """<lab>/efs becomes a noatime bind mount of itself (labctl up): reads from the host don't count."""
    path = storage()
    path.mkdir(parents=True, exist_ok=True)
    if not _mounted(path):
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,noatime", str(path)], check=True)


def release_storage() -> None:
    """Undo guard_storage (labctl down), so the lab directory can be removed."""
    path = storage()
    while path.is_dir() and _mounted(path):
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


# -- accounting ---------------------------------------------------------------------------------
def _preferred(a: str, b: str) -> str:
    """Of two names of one inode (hard links), the one a person looks for: not in our areas, short."""
    return min(a, b, key=lambda p: (p.count("/.reefguide-"), len(p), p))


def scan(root: Path) -> dict[str, list]:
    """'dev:ino' -> [atime_ns, ctime_ns, size, path relative to root] of every regular file."""
    found: dict[str, list] = {}
    stack = [str(root)]
    base = len(str(root)) + 1
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # removed while we walked
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                key = "%d:%d" % (st.st_dev, st.st_ino)
                rel = entry.path[base:]
                if key in found:
                    found[key][3] = _preferred(found[key][3], rel)
                else:
                    found[key] = [st.st_atime_ns, st.st_ctime_ns, st.st_size, rel]
    return found


def reads_between(before: Optional[dict[str, int]], now: dict[str, list]) -> dict[str, int]:
    """path -> size of each file read between the snapshot `before` ('dev:ino' -> atime_ns) and `now`."""
    read: dict[str, int] = {}
    for key, (atime, ctime, size, rel) in now.items():
        old = before.get(key) if before is not None else None
        moved = atime > old if old is not None else atime > ctime + TICK_NS
        if moved:
            read[rel] = size
    return read


def _empty_ledger() -> dict[str, Any]:
    return {"since": time.time(), "bytes": 0, "files": 0, "read": {}, "sessions": {}}


def _add(counter: dict[str, Any], read: dict[str, int]) -> None:
    counter["bytes"] += sum(read.values())
    counter["files"] += len(read)
    paths = counter.setdefault("read", {})
    for rel, size in read.items():
        paths[rel] = paths.get(rel, 0) + size
    if len(paths) > PATHS_KEPT:
        counter["read"] = dict(sorted(paths.items(), key=lambda kv: -kv[1])[:PATHS_KEPT])


def _load(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


@contextmanager
def _ledger() -> Iterator[dict[str, Any]]:
    """The ledger, brought up to date with the reads since the last snapshot; saved on exit."""
    lab_dir().mkdir(parents=True, exist_ok=True)
    with open(lab_dir() / "efs-reads.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ledger = _load(ledger_path()) or _empty_ledger()
        now = scan(storage()) if storage().is_dir() else {}
        read = reads_between(_load(snapshot_path()), now)
        _add(ledger, read)
        for session in ledger["sessions"].values():
            if session.get("ended") is None:
                _add(session, read)
        yield ledger
        _save(snapshot_path(), {key: rec[0] for key, rec in now.items()})
        _save(ledger_path(), ledger)


def session_started(session_id: str, instance_id: str) -> None:
    """labd: an SSM session opened (reads before it are not its own)."""
    with _ledger() as ledger:
        sessions = ledger["sessions"]
        sessions[session_id] = {"instance_id": instance_id, "started": time.time(), "ended": None,
                                "bytes": 0, "files": 0, "read": {}}
        for old in sorted(sessions, key=lambda s: sessions[s]["started"])[:-SESSIONS_KEPT]:
            if sessions[old].get("ended") is not None:
                del sessions[old]


def session_ended(session_id: str) -> None:
    """labd: an SSM session was terminated (or its instance stopped); idempotent."""
    with _ledger() as ledger:
        session = ledger["sessions"].get(session_id)
        if session is not None and session.get("ended") is None:
            session["ended"] = time.time()


def report(reset: bool = False) -> dict[str, Any]:
    """The counts up to now: total since the last reset, and per SSM session (latest last);
    with reset, counting starts afresh after this report (open sessions go on, from zero)."""
    with _ledger() as ledger:
        doc = json.loads(json.dumps(ledger))
        if reset:
            open_sessions = {sid: dict(s, bytes=0, files=0, read={})
                             for sid, s in ledger["sessions"].items() if s.get("ended") is None}
            ledger.clear()
            ledger.update(_empty_ledger(), sessions=open_sessions)
    sessions = sorted(({"session_id": sid, **s} for sid, s in doc["sessions"].items()), key=lambda s: s["started"])
    return {"since": doc["since"], "bytes": doc["bytes"], "files": doc["files"], "read": doc["read"],
            "sessions": sessions, "last_session": sessions[-1] if sessions else None}


def brief() -> dict[str, Any]:
    """For `labctl status`: the totals and the last session's, without the path lists."""
    doc = report()
    last = doc["last_session"]
    return {"bytes": doc["bytes"], "files": doc["files"], "since": doc["since"],
            "last_session": {k: last[k] for k in ("session_id", "bytes", "files", "ended")} if last else None}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("efs-reads", help="bytes read from the lab's EFS through the instance's mount (json)")
    p.add_argument("--reset", action="store_true", help="print the counts, then start counting afresh")
    p.set_defaults(func=cmd_efs_reads)


def cmd_efs_reads(args: argparse.Namespace) -> None:
    print(json.dumps(report(reset=args.reset), indent=2, sort_keys=True))
