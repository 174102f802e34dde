# One target of efs_release and the safe steps on it: paths checked, lock, history with its
# swap journal and recovery, carrying entries over, the swap itself, the report. The
# operations that put these steps together (release, rollback, prune) are in release.py.

from __future__ import annotations

import os
import stat
from typing import Any, Optional

from ansible.module_utils.reefguide.fs import (
    entry_state,
    ino,
    is_real_dir,
    make_dirs,
    nearest_existing,
    rel_join,
    remove_tree,
    rename_exchange,
    tree_size,
)
from ansible.module_utils.reefguide.layout import cache_inside, default_preserve, holds_workers_root, target_key
from ansible.module_utils.reefguide.paths import parents_within, safe_relpath
from ansible.module_utils.reefguide.release_in_place import IN_PLACE_TMP, swap_contents
from ansible.module_utils.reefguide.release_plan import (
    REFUSED_NESTED,
    REFUSED_PRESERVED,
    carry_action,
    carry_entries,
    first_overlap,
    free_id,
    recovery_step,
)
from ansible.module_utils.reefguide.releases_store import (
    ReleaseError,
    list_releases,
    load_history,
    lock_target,
    nested_release_targets,
    save_history,
    timestamp_id,
    utc_now,
)
from ansible.module_utils.reefguide.users import UnknownUserError, resolve_ids


class ReleaseTarget:
    """One efs_release call on one target: its paths, history and steps."""

    def __init__(self, host: Any, params: dict[str, Any], check: bool, diff: bool, root: str,
                 target_rel: str) -> None:
        self.host = host
        self.p = params
        self.check = check
        self.diff = diff
        self.root = root
        self.target_rel = target_rel
        self.target = rel_join(root, target_rel)
        self.releases_rel = safe_relpath(self.p["releases_dir"], "releases_dir")
        self.key_dir = os.path.join(rel_join(root, self.releases_rel), target_key(target_rel))
        self.staging_rel: Optional[str] = None
        self.staging: Optional[str] = None
        if self.p["staging"]:
            self.staging_rel = safe_relpath(self.p["staging"], "staging")
            self.staging = rel_join(root, self.staging_rel)
        preserve = self.p["preserve"]
        if preserve is None:
            preserve = default_preserve(target_rel)
        self.preserve = [safe_relpath(e, "preserve entry") for e in preserve]
        self.cache_rel = cache_inside(target_rel)
        # The workers hold their root by handle: keep the directory, swap what it holds.
        self.in_place = self.p["swap"] == "in_place" or (self.p["swap"] == "auto" and holds_workers_root(target_rel))
        try:
            self.uid, self.gid = resolve_ids(self.p["owner"], self.p["group"])
        except UnknownUserError as exc:
            raise ReleaseError(str(exc)) from exc
        self.history: dict[str, Any] = {}
        self.lock_fd: Optional[int] = None
        self.live_touched = False  # set once this call may have changed what is live (see run_efs_release)
        self.kept_after: Optional[list[str]] = None
        self._nested: Optional[list[str]] = None
        self.result: dict[str, Any] = {
            "changed": False,
            "target_path": self.target,
            "releases_path": self.key_dir,
            "swap_method": None,
            "preserved": [],
            "pruned": [],
            "held": [],
            "bytes_freed": 0,
            "recovered": None,
        }
        if self.staging:
            self.result["staging_path"] = self.staging
        self.check_layout()

    # -- validation ----------------------------------------------------------

    def check_layout(self) -> None:
        named = [("target", self.target_rel), ("releases_dir", self.releases_rel)]
        if self.staging_rel:
            named.append(("staging", self.staging_rel))
        clash = first_overlap(named)
        if clash:
            raise ReleaseError("%s %r and %s %r overlap: they must be separate directories under %s"
                               % (clash + (self.root,)))
        for what, path in (("target", self.target), ("releases_dir", self.key_dir), ("staging", self.staging)):
            if path is not None:
                self.check_own_dir(what, path)
        releases_root = os.path.dirname(self.key_dir)
        if os.path.islink(releases_root):
            raise ReleaseError("releases_dir %s is a symlink; refusing" % releases_root)
        devices = {os.lstat(nearest_existing(p)).st_dev for p in (self.target, self.key_dir, self.staging) if p}
        if len(devices) > 1:
            raise ReleaseError("target, staging and releases_dir must be on one file system (renames are used); "
                               "they are not under %s" % self.root)

    def check_own_dir(self, what: str, path: str) -> None:
        if not parents_within(self.root, path):
            raise ReleaseError("%s %s leads outside %s through a symlink; refusing" % (what, path, self.root))
        if os.path.islink(path):
            raise ReleaseError("%s %s is a symlink; efs_release moves real directories and will not follow it"
                               % (what, path))
        if os.path.lexists(path) and not os.path.isdir(path):
            advice = ("; a stage makes its destination a directory: to replace that file, stage a file of that "
                      "name into the directory that holds it with mode=merge" if what == "target" else "")
            raise ReleaseError("%s %s exists and is not a directory%s" % (what, path, advice))

    # -- locking, journal ----------------------------------------------------

    def open(self) -> None:
        """Create the releases directory, lock it, load and repair history."""
        if not self.check:
            # Only a release needs to create the releases directory; a
            # rollback or prune of a target that has none has nothing to do.
            if self.p["state"] == "released":
                self.make_dirs(self.key_dir)
            if os.path.isdir(self.key_dir):
                self.lock_fd = lock_target(self.key_dir, self.target_rel, self.p["lock_timeout"])
        self.history = load_history(self.key_dir, self.target_rel)
        if self.history.get("pending"):
            self.live_touched = not self.check  # finishing or undoing an interrupted swap changes what is live
            self.result["recovered"] = self.recover()

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def make_dirs(self, path: str) -> None:
        """mkdir -p within root, owned as asked."""
        make_dirs(self.root, path, self.uid, self.gid)

    def recover(self) -> str:
        """Complete or undo a swap that an earlier run started (journal in
        history['pending']); the inode numbers tell which version is where."""
        pend = self.history["pending"]
        incoming = rel_join(self.root, pend["incoming_path"])
        retire = os.path.join(self.key_dir, pend["outgoing_id"]) if pend.get("outgoing_id") else None
        self.result["changed"] = True
        if self.check:
            return "an interrupted %s of %s would be repaired first (check mode plans nothing further)" % (
                pend["op"], pend["incoming_id"])
        if pend.get("in_place"):
            return self.recover_in_place(pend, incoming, retire)
        step = recovery_step(ino(self.target), ino(incoming), ino(retire) if retire else None,
                             pend["incoming_ino"], pend.get("outgoing_ino"))
        if step == "stuck":
            raise ReleaseError(
                "an interrupted %s of %s left %s, %s and %s in a state this module cannot repair; check them by "
                "hand and remove 'pending' from %s/history.json" % (pend["op"], pend["incoming_id"], self.target,
                                                                    incoming, retire, self.key_dir))
        if step == "undo":
            self.undo(pend, incoming)
            return "undid the interrupted %s of %s (nothing had been swapped)" % (pend["op"], pend["incoming_id"])
        if step == "retire_then_finish":
            os.rename(incoming, retire)
        elif step == "move_in_then_finish":
            self.make_dirs(os.path.dirname(self.target))
            os.rename(incoming, self.target)
        self.finish(pend)
        return "completed the interrupted %s of %s" % (pend["op"], pend["incoming_id"])

    def recover_in_place(self, pend: dict[str, Any], incoming: str, retire: str) -> str:
        """Before the kept copy was complete nothing live had changed: drop
        the copy. After it, the target may be partly updated: every step
        is idempotent against incoming, which is intact until the end."""
        if pend.get("phase") != "apply":
            remove_tree(self.root, retire)
            self.undo(pend, incoming)
            return "undid the interrupted %s of %s (nothing had been swapped)" % (pend["op"], pend["incoming_id"])
        self.finish_in_place(incoming, retire, pend["stays"], None)
        self.finish(pend)
        return "completed the interrupted %s of %s (in place)" % (pend["op"], pend["incoming_id"])

    def undo(self, pend: dict[str, Any], incoming: str) -> None:
        """Put back the entries already carried into incoming; drop the journal."""
        for entry in pend.get("moved", []):
            src, dst = rel_join(incoming, entry), rel_join(self.target, entry)
            if os.path.lexists(src) and not os.path.lexists(dst):
                os.rename(src, dst)
        del self.history["pending"]
        save_history(self.key_dir, self.history)

    def finish(self, pend: dict[str, Any]) -> None:
        self.history["live"] = pend["live_after"]
        kept = [r for r in self.history["releases"] if r.get("release_id") != pend["incoming_id"]]
        if pend.get("retired"):
            kept = [pend["retired"]] + [r for r in kept if r.get("release_id") != pend["retired"]["release_id"]]
        self.history["releases"] = kept
        self.history.pop("pending", None)
        save_history(self.key_dir, self.history)

    def journal(self, op: str, incoming: str, in_id: str, retired: Optional[dict[str, Any]],
                live_after: dict[str, Any], moved: list[str]) -> dict[str, Any]:
        in_place = self.swaps_in_place()
        pend = {
            "op": op,
            "incoming_id": in_id,
            "incoming_path": os.path.relpath(incoming, self.root),
            "incoming_ino": ino(incoming),
            "outgoing_id": retired["release_id"] if retired else None,
            "outgoing_ino": ino(self.target),
            "retired": retired,
            "live_after": dict(live_after, ino=ino(self.target if in_place else incoming)),
            "moved": [] if in_place else moved,
            "started_at": utc_now(),
        }
        if in_place:  # the carried entries stay where they are; phase: 'copy', then 'apply'
            pend.update(in_place=True, phase="copy", stays=moved)
        self.history["pending"] = pend
        save_history(self.key_dir, self.history)
        return pend

    # -- what is live and kept -----------------------------------------------

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

    def kept(self) -> list[dict[str, Any]]:
        return list_releases(self.key_dir, self.history)

    def kept_ids(self) -> list[str]:
        return [r["release_id"] for r in self.kept()]

    def taken_ids(self) -> set[str]:
        ids = set(self.kept_ids())
        ids |= {r.get("release_id") for r in self.history.get("releases", [])}
        if self.history.get("live"):
            ids.add(self.history["live"]["release_id"])
        return ids

    def new_id(self, base: str) -> str:
        taken = self.taken_ids()
        return free_id(base, lambda rid: rid in taken or os.path.lexists(os.path.join(self.key_dir, rid)))

    def outgoing_meta(self, live: Optional[dict[str, Any]], moved: list[str]) -> Optional[dict[str, Any]]:
        """Metadata of the version about to be retired (None if no target)."""
        if not os.path.lexists(self.target):
            return None
        if live:
            meta = dict(live)
        else:
            files, size = tree_size(self.target, moved)
            meta = {"release_id": self.new_id("unrecorded-" + timestamp_id()), "released_at": None,
                    "files": files, "bytes": size, "source": "found"}
        meta.pop("ino", None)
        meta["retired_at"] = utc_now()
        return meta

    def plan_outgoing(self, live: Optional[dict[str, Any]], incoming: str,
                      in_id: str) -> tuple[Optional[dict[str, Any]], Optional[str], list[dict[str, Any]]]:
        """The version to retire (metadata, id) and the carry plan into incoming."""
        outgoing = self.target if os.path.lexists(self.target) else None
        steps = self.plan_carry(outgoing, incoming, in_id)
        retired = self.outgoing_meta(live, moved_entries(steps))
        out_id = retired["release_id"] if retired else None
        for step in steps:
            if step["action"] == "moved":
                step["from"] = out_id
        return retired, out_id, steps

    # -- carried entries -----------------------------------------------------

    def nested_targets(self) -> list[str]:
        """Targets released separately below this one (e.g. data packages
        under data/reefguide), relative to it: they are carried over like
        preserved entries so releasing the parent does not retire them."""
        if self._nested is None:
            self._nested = nested_release_targets(os.path.dirname(self.key_dir), self.target_rel)
        return self._nested

    def plan_carry(self, outgoing: Optional[str], incoming: str, in_id: str) -> list[dict[str, Any]]:
        nested = self.nested_targets()
        steps = []
        for entry in carry_entries(self.preserve, nested, self.cache_rel):
            src = rel_join(outgoing, entry) if outgoing else None
            dst = rel_join(incoming, entry)
            for base, path in ((outgoing, src), (incoming, dst)):
                if base and path and not parents_within(base, path):
                    raise ReleaseError("preserve entry %r leads outside its version through a symlink (%s)"
                                       % (entry, path))
            src_kind = "absent" if not src or not os.path.lexists(src) else ("dir" if is_real_dir(src) else "other")
            dst_state = entry_state(dst)
            action = carry_action(entry, self.preserve, nested, self.cache_rel, self.p["preserve_mode"],
                                  src_kind, dst_state)
            self.refuse_carry(action, entry, incoming, src)
            steps.append({"entry": entry, "action": action, "from": None, "to": in_id,
                          "_src": src, "_dst": dst, "_dst_state": dst_state})
        return steps

    def refuse_carry(self, action: str, entry: str, incoming: str, src: Optional[str]) -> None:
        if action == REFUSED_NESTED:
            raise ReleaseError(
                "%s already has %r, which is released separately as target %s/%s (efs_release carries it "
                "over): remove it from the staged version, or release it as its own target"
                % (incoming, entry, self.target_rel, entry))
        if action == REFUSED_PRESERVED:
            raise ReleaseError(
                "%s already has %r (not empty), and preserve would move %s there: remove it from the "
                "staged version or leave it out of preserve" % (incoming, entry, src))

    def do_carry(self, steps: list[dict[str, Any]], incoming: str) -> None:
        in_place = self.swaps_in_place()
        for step in steps:
            src, dst = step["_src"], step["_dst"]
            if step["action"] == "moved" and in_place:
                continue  # it stays in the live directory, untouched
            if step["action"] == "moved":
                if step["_dst_state"] == "empty_dir":
                    os.rmdir(dst)
                make_dirs(incoming, os.path.dirname(dst))
                os.rename(src, dst)
            elif step["action"] == "created_empty":
                make_dirs(incoming, os.path.dirname(dst))
                os.mkdir(dst)
                like = src if src and is_real_dir(src) else incoming
                st = os.stat(like)
                os.chown(dst, st.st_uid, st.st_gid)
                os.chmod(dst, stat.S_IMODE(st.st_mode))

    def report_carry(self, steps: list[dict[str, Any]]) -> None:
        self.result["preserved"] = [{k: v for k, v in s.items() if not k.startswith("_")} for s in steps]
        if self.cache_rel:
            action = next(s["action"] for s in steps if s["entry"] == self.cache_rel)
            self.result["cache"] = {"path": rel_join(self.target, self.cache_rel), "action": action}

    # -- ownership, the swap -------------------------------------------------

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

    def swaps_in_place(self) -> bool:
        return self.in_place and is_real_dir(self.target)

    def swap(self, incoming: str, retire_to: Optional[str]) -> str:
        pend = self.history["pending"]
        if pend.get("in_place"):
            self.finish_in_place(incoming, retire_to, pend["stays"], lambda: self.save_phase(pend, "apply"))
            return "in_place"
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

    def finish_in_place(self, incoming: str, retire_to: str, stays: list[str], copied: Any) -> None:
        """Swap the target's contents, then drop incoming (its files now live in the target)."""
        swap_contents(self.target, incoming, retire_to, os.path.join(self.key_dir, IN_PLACE_TMP), stays, copied)
        remove_tree(self.root, incoming)

    def save_phase(self, pend: dict[str, Any], phase: str) -> None:
        pend["phase"] = phase
        save_history(self.key_dir, self.history)

    def predicted_swap(self) -> str:
        if not os.path.lexists(self.target):
            return "rename"
        if self.swaps_in_place():
            return "in_place"
        return "two_renames" if self.p["swap"] == "rename" else "exchange"

    # -- reporting -----------------------------------------------------------

    def set_diff(self, live: Optional[dict[str, Any]], new_live: Optional[str], kept_before: list[str],
                 kept_after: list[str], doomed: list[str]) -> None:
        """Record the planned outcome (kept_after) and, with --diff, show it."""
        self.kept_after = kept_after
        if not self.diff:
            return
        header = "%s (%s)" % (self.target_rel, self.target)
        self.result["diff"] = {
            "before_header": header,
            "after_header": header,
            "before": diff_text(live["release_id"] if live else None, kept_before, None),
            "after": diff_text(new_live, kept_after, doomed),
        }

    def finalize(self) -> dict[str, Any]:
        self.unlock()
        names = self.kept_after if self.check and self.kept_after is not None else self.kept_ids()
        self.result["releases"] = names
        prev = self.result.get("previous_release_id")
        self.result["rollback"] = (
            "state: rolled_back, root: %s, target: %s (restores %s)" % (self.root, self.target_rel, prev)
            if prev else "no previous release of %s is kept: nothing to roll back to" % self.target_rel)
        return self.result


def moved_entries(steps: list[dict[str, Any]]) -> list[str]:
    return [s["entry"] for s in steps if s["action"] == "moved"]


def diff_text(live_id: Optional[str], kept: list[str], pruned: Optional[list[str]]) -> str:
    lines = ["live: %s" % (live_id or "-"), "kept releases: %s" % (", ".join(kept) or "-")]
    if pruned:
        lines.append("pruned: %s" % ", ".join(pruned))
    return "\n".join(lines) + "\n"
