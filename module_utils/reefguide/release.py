# efs_release's operations: make a staged version live (release), put a kept one back
# (rollback), delete releases beyond keep (prune), per target and across the releases area
# for teardown, plus the module's entry point. The steps they use are in release_target.py.

from __future__ import annotations

import os
from typing import Any, Optional

from ansible.module_utils.reefguide.fs import (
    FreedBytes,
    entry_state,
    is_real_dir,
    remove_empty_parents,
    remove_tree,
    tree_size,
)
from ansible.module_utils.reefguide.layout import RELEASES_DIR, efs_root_problem, key_to_target, seen_by_workers
from ansible.module_utils.reefguide.params import with_defaults
from ansible.module_utils.reefguide.paths import parents_within, safe_relpath
from ansible.module_utils.reefguide.release_plan import (
    held_by_workers,
    is_live_from,
    keep_after_release,
    keep_after_rollback,
    overlaps,
    prune_plan,
    rollback_choice,
    rollback_is_done,
)
from ansible.module_utils.reefguide.release_target import ReleaseTarget, moved_entries, rel_join
from ansible.module_utils.reefguide.releases_store import (
    ReleaseError,
    check_release_id,
    load_history,
    save_history,
    target_keys,
    timestamp_id,
    utc_now,
)


class Release(ReleaseTarget):
    """One efs_release call on one target: release, roll back or prune.
    freed: the tally of what this call's deletions free (see FreedBytes),
    shared when one call prunes several targets."""

    def __init__(self, host: Any, params: dict[str, Any], check: bool, diff: bool, root: str, target_rel: str,
                 freed: Optional[FreedBytes] = None) -> None:
        super().__init__(host, params, check, diff, root, target_rel)
        self.freed = freed if freed is not None else FreedBytes()

    # -- release -------------------------------------------------------------

    def release(self) -> None:
        if not self.staging:
            raise ReleaseError("staging is required with state: released")
        live = self.live()
        if not os.path.lexists(self.staging):
            self.already_released(live)
            return
        if self.p["unchanged"] and live:
            self.nothing_new(live)
            return
        new_id = self.wanted_new_id()
        retired, out_id, steps = self.plan_outgoing(live, self.staging, new_id)
        files, size = tree_size(self.staging)
        live_after = {"release_id": new_id, "released_at": utc_now(), "files": files, "bytes": size,
                      "source": "staging", "staging": self.staging_rel}
        kept_before = self.kept_ids()
        kept_after, doomed = keep_after_release(kept_before, out_id, self.p["keep"])
        self.result.update(changed=True, release_id=new_id, previous_release_id=out_id)
        self.set_diff(live, new_id, kept_before, kept_after, doomed)
        if self.check:
            self.report_carry(steps)
            self.result["swap_method"] = self.predicted_swap()
            self.result["pruned"] = self.predict_prune(doomed, out_id, moved_entries(steps))
            self.result["chowned"] = self.chown_tree(self.staging)
        else:
            self.result["chowned"] = self.chown_tree(self.staging)
            self.go_live("release", self.staging, new_id, retired, live_after, steps)
            remove_empty_parents(self.root, self.staging)
            self.prune()
        self.result["msg"] = "%s %s live at %s%s (swap: %s)" % (
            "would make" if self.check else "made", new_id, self.target_rel,
            (", keeping %s as a release" % out_id) if out_id else "", self.result["swap_method"])

    def wanted_new_id(self) -> str:
        wanted = self.p["release_id"]
        if not wanted:
            return self.new_id(timestamp_id())
        check_release_id(wanted)
        if wanted in self.taken_ids():
            raise ReleaseError("release_id %s is already used for %s (live or kept); choose another"
                               % (wanted, self.target_rel))
        return wanted

    def go_live(self, op: str, incoming: str, in_id: str, retired: Optional[dict[str, Any]],
                live_after: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """Journal, carry the entries over, swap, record: the one path that changes what is live."""
        self.live_touched = True
        self.journal(op, incoming, in_id, retired, live_after, moved_entries(steps))
        self.do_carry(steps, incoming)
        self.report_carry(steps)
        retire_to = os.path.join(self.key_dir, retired["release_id"]) if retired else None
        self.result["swap_method"] = self.swap(incoming, retire_to)
        self.finish(self.history["pending"])

    def already_released(self, live: Optional[dict[str, Any]]) -> None:
        if not is_live_from(live, self.p["release_id"], self.staging_rel):
            raise ReleaseError("staging directory %s does not exist: nothing to release to %s%s" % (
                self.staging, self.target_rel,
                (" (live release: %s)" % live["release_id"]) if live else ""))
        self.result.update(release_id=live["release_id"], previous_release_id=self.previous_id())
        self.ensure_cache_only()
        self.keep_and_prune(live)
        self.result["msg"] = "%s is already live at %s" % (live["release_id"], self.target_rel)

    def nothing_new(self, live: dict[str, Any]) -> None:
        """unchanged: the caller found the staged tree equal to the live one (a fresh hard-link copy
        of it that the pull left as it was). A release would only push a distinct one out of keep."""
        remove_tree(self.root, self.staging, dry_run=self.check)
        if not self.check:
            remove_empty_parents(self.root, self.staging)
        self.result.update(release_id=live["release_id"], previous_release_id=self.previous_id(), unchanged=True)
        self.ensure_cache_only()
        self.keep_and_prune(live)
        self.result["msg"] = "%s at %s already holds what was staged: nothing released" % (
            live["release_id"], self.target_rel)

    def ensure_cache_only(self) -> None:
        """The cache must exist even when nothing is released."""
        if not self.cache_rel:
            return
        path = rel_join(self.target, self.cache_rel)
        if entry_state(path) != "absent":
            self.result["cache"] = {"path": path, "action": "unchanged"}
            return
        self.result["changed"] = True
        self.result["cache"] = {"path": path, "action": "created_empty"}
        if not self.check:
            self.make_dirs(os.path.dirname(path))
            os.mkdir(path)
            st = os.stat(self.target)
            os.chown(path, st.st_uid, st.st_gid)

    # -- rollback ------------------------------------------------------------

    def previous_id(self) -> Optional[str]:
        kept = self.kept_ids()
        return kept[0] if kept else None

    def rollback(self) -> None:
        live = self.live()
        kept = self.kept()
        wanted = self.p["release_id"]
        if wanted:
            check_release_id(wanted)
        if rollback_is_done(live, wanted):
            self.result.update(release_id=live["release_id"], previous_release_id=self.previous_id())
            self.ensure_cache_only()
            self.result["msg"] = "%s is already live at %s%s" % (
                live["release_id"], self.target_rel,
                "" if wanted else " from a rollback (give release_id to roll back further or forward)")
            return
        chosen = self.chosen_release(kept, wanted)
        in_id = chosen["release_id"]
        retired, out_id, steps = self.plan_outgoing(live, chosen["path"], in_id)
        live_after = {k: v for k, v in chosen.items() if k not in ("path", "retired_at")}
        live_after.update(source="rollback", rolled_back_from=out_id, live_since=utc_now())
        names = [r["release_id"] for r in kept]
        self.result.update(changed=True, release_id=in_id, previous_release_id=out_id)
        self.set_diff(live, in_id, names, keep_after_rollback(names, out_id, in_id), [])
        if self.check:
            self.report_carry(steps)
            self.result["swap_method"] = self.predicted_swap()
        else:
            self.go_live("rollback", chosen["path"], in_id, retired, live_after, steps)
        self.result["msg"] = "%s %s back at %s%s" % (
            "would put" if self.check else "put", in_id, self.target_rel,
            (", keeping %s as a release" % out_id) if out_id else "")

    def chosen_release(self, kept: list[dict[str, Any]], wanted: Optional[str]) -> dict[str, Any]:
        if not kept and not wanted:
            raise ReleaseError("no previous release of %s to roll back to (releases area %s is empty)"
                               % (self.target_rel, self.key_dir))
        chosen = rollback_choice(kept, wanted)
        if chosen is None:
            raise ReleaseError("release %s of %s is not kept; kept releases: %s"
                               % (wanted, self.target_rel, ", ".join(r["release_id"] for r in kept) or "none"))
        return chosen

    # -- removal (teardown's remove) -----------------------------------------

    def retire_live(self) -> Optional[dict[str, Any]]:
        """The target's version goes to its releases area as a kept release instead of being deleted:
        rollback.yml puts it back until keep prunes it. What was kept (None: no directory there)."""
        if not is_real_dir(self.target):
            return None
        meta = self.outgoing_meta(self.live(), [])
        meta["removed_at"] = meta["retired_at"]
        kept = {"target": self.target_rel, "release_id": meta["release_id"], "files": meta.get("files"),
                "bytes": meta.get("bytes")}
        if self.check:
            return kept
        self.live_touched = True
        # renamed first: a crash before the history is written leaves a directory that list_releases
        # still offers (as a release the history does not know), never a lost version
        os.rename(self.target, os.path.join(self.key_dir, meta["release_id"]))
        self.history["live"] = None
        self.history["releases"] = [meta] + [r for r in self.history["releases"]
                                             if r.get("release_id") != meta["release_id"]]
        save_history(self.key_dir, self.history)
        return kept

    # -- pruning -------------------------------------------------------------

    def predict_prune(self, doomed: list[str], not_yet_retired: Optional[str],
                      moved: list[str]) -> list[dict[str, Any]]:
        """Check mode: what prune() will delete; the version this call
        retires is still at the target, less the entries that move out."""
        kept = {r["release_id"]: r for r in self.kept()}
        retiring_now = {"release_id": not_yet_retired, "retired_at": utc_now()}
        held = {r["release_id"] for r in self.held([kept.get(rid) or retiring_now for rid in doomed
                                                    if rid in kept or rid == not_yet_retired])}
        out = []
        for rid in (d for d in doomed if d not in held):
            if rid == not_yet_retired:
                size = self.freed.tree(self.target, moved)[1]
            else:
                size = self.freed.tree(os.path.join(self.key_dir, rid))[1]
            out.append({"target": self.target_rel, "release_id": rid, "bytes": size})
        self.result["bytes_freed"] += sum(d["bytes"] for d in out)
        return out

    def held(self, doomed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of the releases beyond keep, those a running worker may hold open (release_plan.held_by_workers)."""
        if not seen_by_workers(self.target_rel):
            return []
        held = held_by_workers(doomed, self.p["workers_since"])
        self.result["held"] = [{"target": self.target_rel, "release_id": r["release_id"],
                                "retired_at": r.get("retired_at")} for r in held]
        return held

    def prune(self) -> None:
        """Delete (check mode: measure) the releases beyond keep, but those running workers may hold."""
        doomed = prune_plan(self.kept(), self.p["keep"])
        held = [r["release_id"] for r in self.held(doomed)]
        doomed = [r for r in doomed if r["release_id"] not in held]
        swept = 0 if self.check else sweep_pruned(self.root, self.key_dir, self.freed)
        pruned = prune_releases(self.root, self.key_dir, self.history, doomed, self.freed, dry_run=self.check)
        self.result["pruned"] = [dict(p, target=self.target_rel) for p in pruned]
        self.result["bytes_freed"] += swept + sum(p["bytes"] for p in pruned)
        if pruned or swept:
            self.result["changed"] = True

    def keep_and_prune(self, live: Optional[dict[str, Any]]) -> None:
        """Nothing released: apply keep to what is kept."""
        kept = self.kept_ids()
        kept_after, doomed = keep_after_release(kept, None, self.p["keep"])
        self.set_diff(live, live["release_id"] if live else None, kept, kept_after, doomed)
        self.prune()

    def pruned_state(self) -> None:
        live = self.live()
        self.keep_and_prune(live)
        self.result.update(release_id=live["release_id"] if live else None,
                           previous_release_id=(self.kept_after or [None])[0])
        self.result["msg"] = "%s %d old release(s) of %s" % (
            "would prune" if self.check else "pruned", len(self.result["pruned"]), self.target_rel)


# A release on its way out is renamed to this prefix + its id first: list_releases offers no dot
# name, so a prune cut halfway (a crash, a lost instance, a file held open) leaves nothing that a
# rollback could put back half deleted; the next prune of the target sweeps what is left.
PRUNING = ".pruning-"


def prune_releases(root: str, key_dir: str, history: dict[str, Any], doomed: list[dict[str, Any]],
                   freed: FreedBytes, dry_run: bool = False) -> list[dict[str, Any]]:
    """Delete the doomed releases of one target (list_releases entries): each is renamed out of
    reach, dropped from the history (saved), then deleted; dry_run only measures. Returns
    [{release_id, bytes}]: the bytes each deletion frees, counted in freed (releases are hard-link
    copies of each other)."""
    out = []
    for rel in doomed:
        path = rel["path"]
        if not dry_run:
            path = os.path.join(key_dir, PRUNING + rel["release_id"])
            os.rename(rel["path"], path)
            history["releases"] = [r for r in history.get("releases", []) if r.get("release_id") != rel["release_id"]]
            save_history(key_dir, history)
        out.append({"release_id": rel["release_id"],
                    "bytes": remove_tree(root, path, dry_run, freed, leave_open_nfs_files=True)[1]})
    return out


def sweep_pruned(root: str, key_dir: str, freed: FreedBytes) -> int:
    """What earlier prunes left under PRUNING names (cut short, or files still open then): deleted now,
    the .nfs* files still open left again. The bytes freed."""
    try:
        names = [n for n in os.listdir(key_dir) if n.startswith(PRUNING)]
    except FileNotFoundError:
        return 0
    return sum(remove_tree(root, os.path.join(key_dir, n), False, freed, leave_open_nfs_files=True)[1]
               for n in sorted(names))


def run_target(host: Any, params: dict[str, Any], check: bool, diff: bool, root: str, target_rel: str,
               freed: Optional[FreedBytes] = None) -> dict[str, Any]:
    """One target: release, roll back or prune (params['state'])."""
    rel = Release(host, params, check, diff, root, target_rel, freed)
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
        result = rel.finalize()
        result["live_changed"] = rel.live_touched
        return result
    except (ReleaseError, OSError) as exc:
        exc.live_touched = rel.live_touched  # type: ignore[union-attr]  (see run_efs_release)
        raise
    finally:
        rel.unlock()


def retire_target(host: Any, root: str, target_rel: str, check: bool) -> Optional[dict[str, Any]]:
    """teardown's remove of a released target: keep its version as a release (see retire_live)."""
    params = with_defaults(EFS_RELEASE_ARGS, {"root": root, "target": target_rel, "state": "pruned"})
    rel = Release(host, params, check, False, root, target_rel)
    try:
        if not check:
            rel.make_dirs(rel.key_dir)
        rel.open()
        return rel.retire_live()
    finally:
        rel.unlock()


def staging_leftover(params: dict[str, Any], root: str, protect: list[str]) -> Optional[str]:
    """state=pruned: the validated staging leftover to delete, if given."""
    if not params["staging"]:
        return None
    return deletable(root, "staging", safe_relpath(params["staging"], "staging"), protect)


def deletable(root: str, name: str, rel: str, protect: list[str]) -> str:
    """The absolute path of rel (the parameter name), to be deleted: it overlaps nothing in protect
    and no symlinked parent leads it out of root."""
    for other in protect:
        if overlaps(rel, other):
            raise ReleaseError("%s %r overlaps %r; refusing to delete it" % (name, rel, other))
    path = rel_join(root, rel)
    if not parents_within(root, path):
        raise ReleaseError("%s %s leads outside %s through a symlink; refusing" % (name, path, root))
    return path


def staging_area(params: dict[str, Any], root: str, target_rel: str) -> Optional[str]:
    """state=released: the validated staging area to delete after the release, if given. It must
    hold the staging directory and nothing else of ours (the target, the releases area)."""
    if not params.get("staging_area") or params["state"] != "released":
        return None
    area_rel = safe_relpath(params["staging_area"], "staging_area")
    staging_rel = safe_relpath(params["staging"], "staging")
    if not staging_rel.startswith(area_rel + "/"):
        raise ReleaseError("staging_area %r does not hold staging %r; refusing to delete it" % (area_rel, staging_rel))
    return deletable(root, "staging_area", area_rel, [target_rel, safe_relpath(params["releases_dir"], "releases_dir")])


def all_targets(releases_root: str) -> list[str]:
    """Every target with a releases directory, as its history names it."""
    return [load_history(os.path.join(releases_root, key), key_to_target(key)).get("target")
            for key in target_keys(releases_root)]


def prune_state(host: Any, p: dict[str, Any], check: bool, diff: bool, root: str) -> dict[str, Any]:
    """state=pruned: the named target, or every target in the releases
    area, then the staging leftover if given. Teardown uses this."""
    releases_rel = safe_relpath(p["releases_dir"], "releases_dir")
    releases_root = rel_join(root, releases_rel)
    if not parents_within(root, releases_root) or os.path.islink(releases_root):
        raise ReleaseError("releases_dir %s leads outside %s or is a symlink; refusing" % (releases_root, root))
    targets = [safe_relpath(p["target"], "target")] if p["target"] is not None else all_targets(releases_root)
    leftover = staging_leftover(p, root, targets + [releases_rel])
    result: dict[str, Any] = {"changed": False, "pruned": [], "held": [], "bytes_freed": 0, "swap_method": None}
    recovered = []
    freed = FreedBytes()  # a file shared by pruned releases and the leftover counts once, in check mode too
    for target_rel in targets:
        one = run_target(host, p, check, diff, root, target_rel, freed)
        if p["target"] is not None:
            result = one
        else:
            result["pruned"] += one["pruned"]
            result["held"] += one["held"]
            result["bytes_freed"] += one["bytes_freed"]
            result["changed"] = result["changed"] or one["changed"]
        if one["recovered"]:
            recovered.append("%s: %s" % (target_rel, one["recovered"]))
    result["recovered"] = "; ".join(recovered) or None
    result["staging_removed"] = False
    if leftover:
        result["staging_path"] = leftover
        if os.path.lexists(leftover):
            result["bytes_freed"] += remove_tree(root, leftover, check, freed)[1]
            result["staging_removed"] = True
            result["changed"] = True
    result["msg"] = "%s %d old release(s) of %d target(s)%s, %d bytes" % (
        "would prune" if check else "pruned", len(result["pruned"]), len(targets),
        " and the staging leftover" if result["staging_removed"] else "", result["bytes_freed"])
    return result


EFS_RELEASE_ARGS: dict[str, Any] = dict(
    root=dict(type="path", required=True),
    require_mount=dict(type="bool", default=False),
    target=dict(type="str"),
    staging=dict(type="str"),
    staging_area=dict(type="str"),
    unchanged=dict(type="bool", default=False),
    state=dict(type="str", choices=["released", "rolled_back", "pruned"], default="released"),
    keep=dict(type="int", default=2),
    release_id=dict(type="str"),
    releases_dir=dict(type="str", default=RELEASES_DIR),
    preserve=dict(type="list", elements="str"),
    preserve_mode=dict(type="str", choices=["move", "fresh"], default="move"),
    owner=dict(type="str"),
    group=dict(type="str"),
    swap=dict(type="str", choices=["auto", "exchange", "rename", "in_place"], default="auto"),
    lock_timeout=dict(type="int", default=600),
    workers_since=dict(type="float"),
)
EFS_RELEASE_REQUIRED_IF = [("state", "released", ("target", "staging")), ("state", "rolled_back", ("target",))]


def run_efs_release(host: Any, params: dict[str, Any], check: bool = False, diff: bool = False) -> dict[str, Any]:
    """Do what efs_release does and return its result dict. host provides
    warn(msg) (an AnsibleModule does); params are efs_release's (see
    params.with_defaults). Raises ReleaseError or UnsafePathError; an
    OSError is turned into a ReleaseError naming the path. A ReleaseError's
    live_touched says whether what is live may have changed before it (a
    swap begun, an interrupted one repaired, the release done and a later
    step failed): the run's record of what is live must then not be trusted."""
    if params["keep"] < 0:
        raise ReleaseError("keep must be 0 or more, got %d" % params["keep"])
    for key, value, needed in EFS_RELEASE_REQUIRED_IF:
        if params[key] == value and not all(params.get(n) for n in needed):
            raise ReleaseError("%s: %s needs %s" % (key, value, " and ".join(needed)))
    problem = efs_root_problem(params["root"], params["require_mount"])
    if problem:
        raise ReleaseError(problem)
    root = os.path.realpath(params["root"])
    released = False
    try:
        if params["state"] == "pruned":
            return prune_state(host, params, check, diff, root)
        target_rel = safe_relpath(params["target"], "target")
        area = staging_area(params, root, target_rel)
        result = run_target(host, params, check, diff, root, target_rel)
        released = bool(result.get("swap_method")) and not check
        if area and not result.get("failed"):
            files, size = remove_tree(root, area, dry_run=check)
            result["staging_area_removed"] = {"files": files, "bytes": size}
        return result
    except OSError as exc:
        error = ReleaseError("%s: %s (%s)" % (exc.strerror, exc.filename, type(exc).__name__))
        error.live_touched = getattr(exc, "live_touched", released)  # type: ignore[attr-defined]
        raise error from exc
    except ReleaseError as exc:
        exc.live_touched = getattr(exc, "live_touched", released)  # type: ignore[attr-defined]
        raise
