# What a sync will do, decided from the two listings before anything moves:
# files to transfer, entries to delete, files unchanged. No I/O here, so the
# rules can be tested without S3 (tests/test_sync_plan.py).

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ansible.module_utils.reefguide.checksums import CacheEntry
from ansible.module_utils.reefguide.local_tree import DestTree, LocalFile, SourceTree
from ansible.module_utils.reefguide.manifest import RemoteObject, RemoteState
from ansible.module_utils.reefguide.sync_common import IN_MEMORY_MAX, SyncError, parent_dirs

Pair = tuple[LocalFile, RemoteObject]
# For each (local, remote) pair of the same name: True when the contents
# differ. The sync's answers read SHA-256s lazily (cache, file, HEAD) in its pool.
Differ = Callable[[list[Pair]], list[bool]]
Cached = Callable[[LocalFile], Optional[CacheEntry]]  # a file's checksum cache entry, if its stat is unchanged


@dataclass
class Plan:
    """What a run does; the planners fill in a Plan they are given, so that a
    refused plan still tells what it had found (s3_sync reports it)."""

    transfer: list[tuple[str, int]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    delete_bytes: int = 0
    skip_files: int = 0
    skip_bytes: int = 0
    dirs_create: list[str] = field(default_factory=list)
    dirs_remove: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)


def check_max_delete(plan: Plan, limit: Optional[int]) -> None:
    """Refuses a mirror that would delete more than limit entries (a wrong path or prefix)."""
    if limit is not None and limit >= 0 and len(plan.delete) > limit:
        raise SyncError(
            "mode=mirror would delete %d entries, more than max_delete=%d (first: %s); "
            "check path and prefix, or raise max_delete"
            % (len(plan.delete), limit, ", ".join(plan.delete[:5]))
        )


def spread_over_dirs(objs: list[Any]) -> list[Any]:
    """Biggest first (long transfers start early), then the small files taken
    from each directory in turn: workers creating and renaming files in one
    directory queue on its lock; spread over many, they do not."""
    big = sorted((o for o in objs if o.size > IN_MEMORY_MAX), key=lambda o: -o.size)
    by_dir: dict[str, list[Any]] = {}
    for o in objs:
        if o.size <= IN_MEMORY_MAX:
            by_dir.setdefault(o.rel.rpartition("/")[0], []).append(o)
    queues = list(by_dir.values())
    small = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return big + small


def known_verdict(lf: LocalFile, obj: RemoteObject, cached: Cached) -> Optional[bool]:
    """True when lf and obj differ by kind or size; False when the cache says
    lf was last synced with this very object (same ETag), and obj then takes
    the cached SHA-256 (for the manifest); None when only SHA-256s can tell."""
    if lf.kind != "file" or lf.size != obj.size:
        return True
    entry = cached(lf)
    if entry and entry.etag and entry.etag == obj.etag:
        obj.sha256 = obj.sha256 or entry.sha256
        return False
    return None


def plan_push(
    src: SourceTree,
    remote: RemoteState,
    differ: Differ,
    mirror: bool = False,
    max_delete: Optional[int] = None,
    plan: Optional[Plan] = None,
) -> tuple[Plan, list[LocalFile]]:
    """The plan of a push and the files to upload, biggest first. Mirror
    also deletes the objects and 'dir/' markers the source does not have."""
    plan = Plan() if plan is None else plan
    files = src.files
    both = [(files[rel], remote.files[rel]) for rel in sorted(files) if rel in remote.files]
    differs = dict(zip([lf.rel for lf, _ in both], differ(both)))
    uploads = [files[rel] for rel in sorted(files) if differs.get(rel, rel not in remote.files)]
    # biggest first: long transfers start early, small files fill the gaps
    uploads.sort(key=lambda lf: -lf.size)
    plan.transfer = [(lf.rel, lf.size) for lf in uploads]
    plan.skip_files = len(files) - len(uploads)
    plan.skip_bytes = sum(lf.size for lf in files.values()) - sum(lf.size for lf in uploads)
    if mirror:
        extra = [rel for rel in remote.files if rel not in files]
        local_dirs = set(src.empty)
        for rel in files:
            local_dirs.update(parent_dirs(rel))
        plan.delete = sorted(extra) + sorted(d + "/" for d in remote.markers if d not in local_dirs)
        plan.delete_bytes = sum(remote.files[rel].size for rel in extra)
        check_max_delete(plan, max_delete)
    return plan, uploads


def plan_pull(
    dest: DestTree,
    remote: RemoteState,
    differ: Differ,
    mirror: bool = False,
    max_delete: Optional[int] = None,
    excluded: Callable[[str], bool] = lambda rel: False,
    root_exists: bool = True,
    where: tuple[str, str] = ("s3://bucket/prefix", "the destination"),
    plan: Optional[Plan] = None,
) -> tuple[Plan, list[RemoteObject]]:
    """The plan of a pull and the objects to download, in download order.
    Refuses keys that cannot be stored and, in merge mode, local entries in
    the way (where: the bucket URL and the local root, for the messages).
    Mirror also removes local entries and directories the bucket does not have."""
    plan = Plan() if plan is None else plan
    url, root = where
    _refuse_unstorable(remote, url, root)
    needed_dirs = {d for d in _dirs_of(remote) if not excluded(d)}
    plan.temporaries = sorted(dest.temporaries)
    if not mirror:
        _refuse_in_the_way(dest, remote, needed_dirs, root)
    both = [(dest.files[rel], remote.files[rel]) for rel in sorted(remote.files) if rel in dest.files]
    differs = dict(zip([lf.rel for lf, _ in both], differ(both)))
    downloads = spread_over_dirs([obj for rel, obj in sorted(remote.files.items()) if differs.get(rel, True)])
    plan.transfer = [(o.rel, o.size) for o in downloads]
    plan.skip_files = len(remote.files) - len(downloads)
    plan.skip_bytes = sum(o.size for o in remote.files.values()) - sum(o.size for o in downloads)
    if mirror:
        plan.delete = sorted(rel for rel in dest.files if rel not in remote.files)
        plan.delete_bytes = sum(dest.files[rel].size for rel in plan.delete)
        check_max_delete(plan, max_delete)
        plan.dirs_remove = _dirs_to_remove(dest, remote, needed_dirs)
    remaining_dirs = dest.dirs - set(plan.dirs_remove)
    plan.dirs_create = sorted(d for d in needed_dirs if d not in remaining_dirs)
    if not root_exists:
        plan.dirs_create.insert(0, ".")
    return plan, downloads


def _refuse_unstorable(remote: RemoteState, url: str, root: str) -> None:
    if remote.bad:
        raise SyncError(
            "refusing to pull %s: %d key(s) cannot be stored safely below %s: %s"
            % (url, len(remote.bad), root, "; ".join(remote.bad[:10]))
        )
    conflicts = [rel for rel in remote.files if any(d in remote.files for d in parent_dirs(rel))]
    if conflicts:
        raise SyncError(
            "keys under %s are both a file and a directory (e.g. %r): cannot pull them" % (url, conflicts[0])
        )


def _dirs_of(remote: RemoteState) -> set[str]:
    """Every directory the bucket's files, 'dir/' markers and manifest directories need."""
    needed: set[str] = set()
    for rel in list(remote.files) + sorted(remote.markers) + remote.manifest_dirs:
        needed.update(parent_dirs(rel))
    needed.update(remote.markers)
    needed.update(remote.manifest_dirs)
    return needed


def _refuse_in_the_way(dest: DestTree, remote: RemoteState, needed_dirs: set[str], root: str) -> None:
    """Local entries in the way of a needed directory, directories in the way
    of a file: mirror replaces them, merge refuses."""
    blocking = sorted(d for d in needed_dirs if d in dest.files)
    dir_in_way = sorted(rel for rel in remote.files if rel in dest.dirs)
    if blocking or dir_in_way:
        what = blocking[0] if blocking else dir_in_way[0]
        kind = dest.files[what].kind if what in dest.files else "directory"
        raise SyncError(
            "%s exists in %s as a %s where the bucket has %s; "
            "a merge deletes nothing, so move it away or remove it first, then run again"
            % (what, root, "symlink" if kind == "link" else kind, "a directory" if blocking else "a file")
        )


def _dirs_to_remove(dest: DestTree, remote: RemoteState, needed_dirs: set[str]) -> list[str]:
    """Mirror: local directories neither needed nor holding kept entries, deepest first."""
    kept = dest.keep | needed_dirs
    for rel in dest.files:
        if rel in remote.files:
            kept.update(parent_dirs(rel))
    return sorted((d for d in dest.dirs if d not in kept), key=lambda d: (-d.count("/"), d))
