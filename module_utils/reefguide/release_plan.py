# The release engine's decisions as pure functions: which releases are kept or pruned, what
# happens to each carried-over entry, how to repair an interrupted swap, which release a
# rollback restores. Data in, plan out; no file system access, so each is tested alone.

from __future__ import annotations

import calendar
import time
from typing import Any, Callable, Optional

from ansible.module_utils.reefguide.releases_store import ReleaseError

# carry_action's answers that stop the release before anything changes
REFUSED_NESTED = "refused_nested"
REFUSED_PRESERVED = "refused_preserved"


def overlaps(a: str, b: str) -> bool:
    """One relative path equals or contains the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def first_overlap(named: list[tuple[str, str]]) -> Optional[tuple[str, str, str, str]]:
    """(name_a, path_a, name_b, path_b) of the first two (name, relative
    path) pairs that overlap, or None when all are separate."""
    for i, (name_a, rel_a) in enumerate(named):
        for name_b, rel_b in named[i + 1:]:
            if overlaps(rel_a, rel_b):
                return name_a, rel_a, name_b, rel_b
    return None


def prune_plan(releases: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The releases beyond the newest keep (releases: newest first)."""
    if keep < 0:
        raise ReleaseError("keep must be 0 or more, got %d" % keep)
    return releases[keep:]


def retired_epoch(release: dict[str, Any]) -> Optional[float]:
    """A kept release's retirement (history's retired_at, UTC to the second) in epoch seconds; None unknown."""
    stamp = release.get("retired_at")
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))) if stamp else None
    except ValueError:
        return None


def held_by_workers(doomed: list[dict[str, Any]], workers_since: Optional[float]) -> list[dict[str, Any]]:
    """The doomed releases a running worker may still hold open, kept beyond keep: those retired after
    the oldest running worker task started (workers_since; None: no worker runs). On NFS, deleting a
    file another client holds open gives that client stale handles, and a worker started before a
    release was retired may hold its files. Unknown retirement counts as recent; retired_at is
    truncated to the second, hence the second's grace."""
    if workers_since is None:
        return []
    return [r for r in doomed if retired_epoch(r) is None or retired_epoch(r) + 1 > workers_since]


def keep_after_release(kept: list[str], retiring: Optional[str], keep: int) -> tuple[list[str], list[str]]:
    """(kept after, pruned) once the live version retiring (if any) joins
    the kept releases (newest first) and keep is applied."""
    after = ([retiring] if retiring else []) + kept
    return after[:keep], after[keep:]


def keep_after_rollback(kept: list[str], retiring: Optional[str], restoring: str) -> list[str]:
    """Kept releases after restoring one of them: the retiring version
    first, the restored one gone from the list; a rollback prunes nothing."""
    return ([retiring] if retiring else []) + [rid for rid in kept if rid != restoring]


def rollback_choice(kept: list[dict[str, Any]], wanted: Optional[str]) -> Optional[dict[str, Any]]:
    """The kept release to restore: wanted, or the newest; None if not kept."""
    if not wanted:
        return kept[0] if kept else None
    return next((r for r in kept if r["release_id"] == wanted), None)


def rollback_is_done(live: Optional[dict[str, Any]], wanted: Optional[str]) -> bool:
    """Nothing to do: wanted is live, or (no release named) the live
    version came from a rollback, so repeat runs do not flip back and forth."""
    if not live:
        return False
    return wanted == live["release_id"] or (not wanted and live.get("source") == "rollback")


def is_live_from(live: Optional[dict[str, Any]], wanted: Optional[str], staging_rel: Optional[str]) -> bool:
    """The live release is the one this call asks for (by id, or made from
    the same staging directory): a repeat with nothing left to release."""
    if live is None:
        return False
    if wanted:
        return live["release_id"] == wanted
    return live.get("source") == "staging" and live.get("staging") == staging_rel


def free_id(base: str, taken: Callable[[str], bool]) -> str:
    """base, or base-2, base-3... : the first that is not taken."""
    rid, n = base, 1
    while taken(rid):
        n += 1
        rid = "%s-%d" % (base, n)
    return rid


def carry_entries(preserve: list[str], nested: list[str], cache_rel: Optional[str]) -> list[str]:
    """Entries carried from the outgoing version into the incoming one:
    preserve, then separately released targets not inside a preserved
    entry, then the cache (it must always exist)."""
    entries = list(preserve)
    for entry in nested:
        if entry not in entries and not any(entry.startswith(e + "/") for e in preserve):
            entries.append(entry)
    if cache_rel and cache_rel not in entries:
        entries.append(cache_rel)
    return entries


def carry_action(entry: str, preserve: list[str], nested: list[str], cache_rel: Optional[str], mode: str,
                 src: str, dst: str) -> str:
    """What happens to one carried entry. src: the outgoing version's entry,
    'absent', 'dir' or 'other'; dst: the incoming one's, 'absent',
    'empty_dir' or 'present'. Answers 'moved', 'kept_incoming',
    'created_empty', 'absent', or REFUSED_* when the incoming version
    already holds what would be moved there."""
    src_there = src != "absent"
    preserved = entry in preserve
    if entry in nested and src_there and not preserved:
        return REFUSED_NESTED if dst == "present" else "moved"
    if preserved and mode == "move" and src_there:
        return REFUSED_PRESERVED if dst == "present" else "moved"
    if dst != "absent":
        return "kept_incoming"
    if entry == cache_rel or (preserved and src == "dir"):
        return "created_empty"
    return "absent"


def recovery_step(target_ino: Optional[int], incoming_ino: Optional[int], retired_ino: Optional[int],
                  new: int, old: Optional[int]) -> str:
    """How to repair a swap interrupted after its journal was written, from
    the inode numbers now at the target, the incoming and the retire paths
    (new: the incoming version's, old: the outgoing one's, None if there
    was none). 'retire_then_finish' (exchanged, the outgoing version still
    at the incoming path), 'finish', 'move_in_then_finish' (the target was
    moved away, the incoming version not yet in), 'undo' (nothing swapped)
    or 'stuck'."""
    if target_ino == new:
        return "retire_then_finish" if old is not None and incoming_ino == old else "finish"
    if target_ino is None and incoming_ino == new and (old is None or retired_ino == old):
        return "move_in_then_finish"
    if (old is not None and target_ino == old) or (old is None and target_ino is None):
        return "undo"
    return "stuck"


# -- the in-place swap: the workers' root stays, its contents are swapped -------------------
#
# A listing maps a path relative to the version's top ('' is the top) to (kind, inode, mode,
# uid, gid); kind is 'dir' for a real directory, 'file' for anything else (a file, a symlink).


def _children(listing: dict[str, tuple]) -> dict[str, list[str]]:
    kids: dict[str, list[str]] = {}
    for rel in listing:
        if rel:
            kids.setdefault(rel.rpartition("/")[0], []).append(rel)
    return kids


def _ancestors(paths: list[str]) -> set[str]:
    out = set()
    for path in paths:
        parts = path.split("/")
        out.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return out


def in_place_plan(live: dict[str, tuple], incoming: dict[str, tuple], stays: list[str]) -> list[tuple[str, str]]:
    """The steps that turn the live tree into the incoming one while its
    directories stay, each step one rename (or a mode/owner change):
    ('meta', p) the kept directory p takes incoming's mode and owner;
    ('move_out', p) p, which incoming lacks, goes to the kept release;
    ('link_in', p) incoming's file replaces (or adds) p by rename;
    ('dir_in', p) incoming's directory p, absent from live, is copied
    complete, then renamed in. Directories in both are kept and updated
    inside; a file that is the same inode in both is left alone. stays:
    entries left as they are (the cache, separately released targets);
    their parents are kept even where incoming lacks them. Parents first,
    and within a directory entries leave before new ones come."""
    stay, keep_dirs = set(stays), _ancestors(stays)
    live_kids, in_kids = _children(live), _children(incoming)
    ops: list[tuple[str, str]] = []

    def kept_dir(rel: str) -> None:
        if rel in incoming and incoming[rel][2:] != live[rel][2:]:
            ops.append(("meta", rel))
        names = sorted((set(live_kids.get(rel, [])) | set(in_kids.get(rel, []))) - stay)
        arriving = []
        for path in names:
            old, new = live.get(path), incoming.get(path)
            if path in keep_dirs:
                if (old and old[0] != "dir") or (new and new[0] != "dir"):
                    raise ReleaseError("%s holds a separately released target or the cache, so it must stay a "
                                       "directory in both versions" % path)
                kept_dir(path)
            elif new is None:
                ops.append(("move_out", path))
            elif old is None:
                arriving.append(path)
            elif old[0] == "dir" and new[0] == "dir":
                kept_dir(path)
            elif old[0] == "dir" or new[0] == "dir":
                ops.append(("move_out", path))
                arriving.append(path)
            elif old[1] != new[1]:
                ops.append(("link_in", path))
        ops.extend(("dir_in" if incoming[p][0] == "dir" else "link_in", p) for p in arriving)

    kept_dir("")
    return ops


def in_place_leaving(ops: list[tuple[str, str]]) -> list[str]:
    """The live entries that leave whole (moved into the kept release), so
    the kept release's hard-link copy leaves them out."""
    return [path for step, path in ops if step == "move_out"]
