"""efs_release, run through ansible on localhost with the instance's python
(/usr/bin/python3) in temporary directories: the behaviour does not depend
on the instance beyond the file system. An interrupted swap is simulated by
running the engine in-process and failing one rename."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.reefguide.layout import target_key
from ansible.module_utils.reefguide.params import with_defaults
from ansible.module_utils.reefguide.paths import UnsafePathError
from ansible.module_utils.reefguide.release import EFS_RELEASE_ARGS, run_efs_release
from ansible.module_utils.reefguide.releases_store import ReleaseError

from helpers import run_module

INSTANCE_PYTHON = "/usr/bin/python3"
PKG = "data/reefguide/adria/datapackages/Moore_2025-01-17_v070_rc1"
RELEASES = ".reefguide-releases"


def write_tree(top: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def snapshot(top: Path) -> dict[str, Any]:
    """Every entry below top: bytes of files, 'dir', or '-> link'."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(top))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
    return out


def version(n: int) -> dict[str, bytes]:
    """A data package whose every file differs between versions, with
    names that break naive tools."""
    return {
        "datapackage.json": json.dumps({"name": "Moore", "version": n}).encode(),
        "spatial/Moore reefs.gpkg": hashlib.sha256(b"%d" % n).digest() * 64,
        "results/ünïcode 'quoted' \"name\".nc": b"x" * (100 * n),
        "odd/new\nline.txt": b"line %d\n" % n,
    }


class EFS:
    """A temporary 'EFS root' and helpers to stage and release into it."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "efs"
        self.root.mkdir()
        self.outside = tmp / "outside"
        self.outside.mkdir()

    def stage(self, run_id: str, files: dict[str, bytes], name: str = "pkg") -> str:
        rel = ".reefguide-staging/%s/%s" % (run_id, name)
        top = self.root / rel
        top.mkdir(parents=True)
        write_tree(top, files)
        return rel

    def run(self, args: dict[str, Any], check: bool = False, diff: bool = False) -> dict[str, Any]:
        full: dict[str, Any] = {"root": str(self.root)}
        full.update(args)
        return run_module("efs_release", full, check=check, diff=diff, python=INSTANCE_PYTHON)

    def release(self, run_id: str, files: dict[str, bytes], target: str = PKG, **extra: Any) -> dict[str, Any]:
        staging = self.stage(run_id, files)
        return self.run(dict({"target": target, "staging": staging, "release_id": run_id}, **extra))

    def key_dir(self, target: str = PKG) -> Path:
        return self.root / RELEASES / target_key(target)


@pytest.fixture
def efs(tmp_path: Path) -> EFS:
    return EFS(tmp_path)


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("failed"), result.get("msg", result)
    return result


def test_first_release_then_second_keeps_the_previous_one(efs: EFS) -> None:
    v1, v2 = version(1), version(2)
    first = ok(efs.release("r1", v1))
    assert first["changed"] is True and first["release_id"] == "r1"
    assert first["previous_release_id"] is None and first["swap_method"] == "rename"
    assert snapshot(efs.root / PKG) == snapshot_of(v1)
    assert not (efs.root / ".reefguide-staging").exists()  # emptied staging parents are tidied

    second = ok(efs.release("r2", v2))
    assert second["changed"] is True
    assert second["release_id"] == "r2" and second["previous_release_id"] == "r1"
    assert second["swap_method"] == "exchange"  # ext4 here; EFS (NFS) falls back to two renames
    assert second["releases"] == ["r1"]
    assert snapshot(efs.root / PKG) == snapshot_of(v2)
    assert snapshot(efs.key_dir() / "r1") == snapshot_of(v1)
    assert "rolled_back" in second["rollback"] and "r1" in second["rollback"]

    history = json.loads((efs.key_dir() / "history.json").read_text())
    assert history["live"]["release_id"] == "r2"
    assert history["live"]["files"] == 4 and history["live"]["bytes"] == sum(len(b) for b in v2.values())
    assert [r["release_id"] for r in history["releases"]] == ["r1"]

    # The staging directory is gone and r2 is live: a repeat is a no-op.
    again = ok(efs.run({"target": PKG, "staging": ".reefguide-staging/r2/pkg", "release_id": "r2"}))
    assert again["changed"] is False and again["release_id"] == "r2"
    assert again["previous_release_id"] == "r1"
    again_no_id = ok(efs.run({"target": PKG, "staging": ".reefguide-staging/r2/pkg"}))
    assert again_no_id["changed"] is False


def snapshot_of(files: dict[str, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rel, data in files.items():
        parts = rel.split("/")
        for i in range(1, len(parts)):
            out["/".join(parts[:i])] = "dir"
        out[rel] = data
    return out


def test_two_renames_fallback_gives_the_same_result(efs: EFS) -> None:
    ok(efs.release("r1", version(1), swap="rename"))
    second = ok(efs.release("r2", version(2), swap="rename"))
    assert second["swap_method"] == "two_renames"
    assert snapshot(efs.root / PKG) == snapshot_of(version(2))
    assert snapshot(efs.key_dir() / "r1") == snapshot_of(version(1))


def test_rollback_restores_the_previous_bytes_exactly(efs: EFS) -> None:
    v1, v2 = version(1), version(2)
    ok(efs.release("r1", v1))
    ok(efs.release("r2", v2))
    predicted = ok(efs.run({"target": PKG, "state": "rolled_back"}, check=True))
    assert predicted["changed"] is True and predicted["release_id"] == "r1"
    assert snapshot(efs.root / PKG) == snapshot_of(v2)

    back = ok(efs.run({"target": PKG, "state": "rolled_back"}))
    for key in ("changed", "release_id", "previous_release_id", "releases"):
        assert back[key] == predicted[key], key
    assert back["release_id"] == "r1" and back["previous_release_id"] == "r2"
    assert back["releases"] == ["r2"]
    assert snapshot(efs.root / PKG) == snapshot_of(v1)
    assert snapshot(efs.key_dir() / "r2") == snapshot_of(v2)

    # A second rollback does not flip back: it is already rolled back.
    assert ok(efs.run({"target": PKG, "state": "rolled_back"}))["changed"] is False
    # Rolling forward is explicit.
    forward = ok(efs.run({"target": PKG, "state": "rolled_back", "release_id": "r2"}))
    assert forward["changed"] is True and snapshot(efs.root / PKG) == snapshot_of(v2)


def test_rollback_without_a_previous_release_is_a_clear_error(efs: EFS) -> None:
    ok(efs.release("r1", version(1)))
    result = efs.run({"target": PKG, "state": "rolled_back"})
    assert result.get("failed") and "no previous release" in result["msg"] and PKG in result["msg"]
    missing = efs.run({"target": PKG, "state": "rolled_back", "release_id": "nope"})
    assert missing.get("failed") and "nope" in missing["msg"]


def test_a_staging_the_caller_found_unchanged_releases_nothing_and_prunes_nothing_it_would_not(efs: EFS) -> None:
    """Re-staging what is live (after a rollback, or over a pending record) must not cut a release
    that pushes a distinct kept one out of keep."""
    first = ok(efs.release("r1", version(1), unchanged=True))  # no live release yet: released as usual
    assert first["release_id"] == "r1" and first["live_changed"] is True and not first.get("unchanged")
    ok(efs.release("r2", version(2), keep=1))
    before = snapshot(efs.root)
    same = ok(efs.release("r3", version(2), keep=1, unchanged=True))
    assert same["unchanged"] and same["release_id"] == "r2" and same["previous_release_id"] == "r1", same
    assert same["live_changed"] is False and same["pruned"] == [] and same["releases"] == ["r1"]
    after = snapshot(efs.root)
    assert after == {k: v for k, v in before.items() if k in after}  # nothing changed, the staged copy gone
    assert not [k for k in after if k.startswith(".reefguide-staging/r3/pkg")]


def test_a_failure_says_whether_what_is_live_may_have_changed(efs: EFS, monkeypatch) -> None:
    """live_changed in the failed result: the caller's record of what is live is then not trusted."""
    ok(efs.release("r1", version(1)))
    refused = efs.run({"target": PKG, "state": "rolled_back"})  # nothing to roll back to: nothing touched
    assert refused.get("failed") and refused["live_changed"] is False, refused
    taken = efs.run({"target": PKG, "staging": efs.stage("r1", version(2)), "release_id": "r1"})
    assert taken.get("failed") and "already used" in taken["msg"] and taken["live_changed"] is False, taken
    staging = efs.stage("r2", version(2))
    real_rename = os.rename

    def fail_on_staging(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        if str(src) == str(efs.root / staging):
            raise OSError(5, "Input/output error", str(src))
        real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", fail_on_staging)
    with pytest.raises(ReleaseError) as failed:  # the swap had begun
        run_in_process(efs, target=PKG, staging=staging, release_id="r2", swap="rename")
    assert failed.value.live_touched is True and "Input/output error" in str(failed.value)


def test_data_reefguide_cache_survives_and_always_exists(efs: EFS) -> None:
    live = efs.root / "data/reefguide"
    write_tree(live, {"config.toml": b"old = 1\n", "cache/regions.dat": b"cached", "criteria/depth.tif": b"d1"})
    staged = {"config.toml": b"new = 2\n", "criteria/depth.tif": b"d2"}

    first = ok(efs.release("r1", staged, target="data/reefguide"))
    assert first["previous_release_id"].startswith("unrecorded-")
    assert first["cache"] == {"path": str(live / "cache"), "action": "moved"}
    assert (live / "cache/regions.dat").read_bytes() == b"cached"
    assert (live / "config.toml").read_bytes() == b"new = 2\n"
    old = efs.key_dir("data/reefguide") / first["previous_release_id"]
    assert snapshot(old) == {"config.toml": b"old = 1\n", "criteria": "dir", "criteria/depth.tif": b"d1"}

    # The cache vanished by hand: the next release still leaves one behind.
    (live / "cache/regions.dat").unlink()
    (live / "cache").rmdir()
    second = ok(efs.release("r2", {"config.toml": b"v3\n"}, target="data/reefguide"))
    assert second["cache"]["action"] == "created_empty"
    assert (live / "cache").is_dir() and os.listdir(live / "cache") == []

    # fresh: the old cache stays with the old version, the new one starts empty.
    (live / "cache/tile").write_bytes(b"r2's cache")
    third = ok(efs.release("r3", {"config.toml": b"v4\n"}, target="data/reefguide", preserve_mode="fresh"))
    assert third["cache"]["action"] == "created_empty"
    assert os.listdir(live / "cache") == []
    assert (efs.key_dir("data/reefguide") / "r2/cache/tile").read_bytes() == b"r2's cache"
    # ... and a rollback brings r2 back with the cache that belongs to it.
    back = ok(efs.run({"target": "data/reefguide", "state": "rolled_back", "preserve_mode": "fresh"}))
    assert back["release_id"] == "r2" and back["cache"]["action"] == "kept_incoming"
    assert (live / "cache/tile").read_bytes() == b"r2's cache"


def test_cache_in_staging_that_is_not_empty_stops_before_any_change(efs: EFS) -> None:
    live = efs.root / "data/reefguide"
    write_tree(live, {"config.toml": b"old\n", "cache/a": b"live cache"})
    staging = efs.stage("r1", {"config.toml": b"new\n", "cache/b": b"staged cache"})
    before = snapshot(efs.root)
    result = efs.run({"target": "data/reefguide", "staging": staging, "release_id": "r1"})
    assert result.get("failed") and "cache" in result["msg"] and "preserve" in result["msg"]
    after = {k: v for k, v in snapshot(efs.root).items() if k != RELEASES and not k.startswith(RELEASES + "/")}
    assert after == before


def test_check_mode_changes_nothing_and_predicts_the_release(efs: EFS) -> None:
    for n in (1, 2, 3):
        ok(efs.release("r%d" % n, version(n)))
    staging = efs.stage("r4", version(4))
    args = {"target": PKG, "staging": staging, "release_id": "r4", "keep": 1}
    before = snapshot(efs.root)
    predicted = ok(efs.run(args, check=True, diff=True))
    assert snapshot(efs.root) == before
    assert predicted["diff"]["before"] == "live: r3\nkept releases: r2, r1\n"
    assert predicted["diff"]["after"] == "live: r4\nkept releases: r3\npruned: r2, r1\n"

    real = ok(efs.run(args))
    for key in ("changed", "release_id", "previous_release_id", "swap_method", "pruned", "bytes_freed",
                "releases", "preserved"):
        assert real[key] == predicted[key], key


@pytest.mark.parametrize(
    "target, message",
    [
        ("data/../../outside/x", "contains '..'"),
        ("/etc", "is absolute"),
        ("data/reefguide", "leads outside"),  # data -> ../outside
    ],
)
def test_paths_that_escape_the_root_are_refused(efs: EFS, target: str, message: str) -> None:
    (efs.root / "data").symlink_to(efs.outside)
    staging = efs.stage("r1", version(1))
    before_outside = snapshot(efs.outside)
    result = efs.run({"target": target, "staging": staging})
    assert result.get("failed") and message in result["msg"], result
    assert snapshot(efs.outside) == before_outside
    assert (efs.root / staging).is_dir()


def test_symlinked_staging_or_releases_area_is_refused(efs: EFS) -> None:
    write_tree(efs.outside / "pkg", version(1))
    (efs.root / "stage").mkdir()
    (efs.root / "stage/pkg").symlink_to(efs.outside / "pkg")
    result = efs.run({"target": PKG, "staging": "stage/pkg"})
    assert result.get("failed") and "symlink" in result["msg"]
    assert snapshot(efs.outside / "pkg") == snapshot_of(version(1))
    assert not (efs.root / PKG).exists()

    staging = efs.stage("r1", version(1))
    (efs.root / RELEASES).symlink_to(efs.outside)
    result = efs.run({"target": PKG, "staging": staging})
    assert result.get("failed") and ("outside" in result["msg"] or "symlink" in result["msg"])
    assert os.listdir(efs.outside) == ["pkg"]


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "x" * 101])
def test_unsafe_release_ids_are_refused(efs: EFS, bad: str) -> None:
    staging = efs.stage("r1", version(1))
    result = efs.run({"target": PKG, "staging": staging, "release_id": bad})
    assert result.get("failed") and "not safe" in result["msg"]
    assert not (efs.root / PKG).exists()


def test_missing_staging_that_was_never_released_is_an_error(efs: EFS) -> None:
    ok(efs.release("r1", version(1)))
    result = efs.run({"target": PKG, "staging": ".reefguide-staging/other/pkg"})
    assert result.get("failed") and "does not exist" in result["msg"] and "r1" in result["msg"]


def test_release_id_in_use_is_refused(efs: EFS) -> None:
    ok(efs.release("r1", version(1)))
    result = efs.release("r1", version(2))
    assert result.get("failed") and "already used" in result["msg"]
    assert snapshot(efs.root / PKG) == snapshot_of(version(1))


class Host:
    """What the release engine needs from its caller (an AnsibleModule in production)."""

    def warn(self, msg: str) -> None:
        pass


def run_in_process(efs: EFS, **params: Any) -> dict[str, Any]:
    full = with_defaults(EFS_RELEASE_ARGS, dict({"root": str(efs.root), "lock_timeout": 5}, **params))
    return run_efs_release(Host(), full)


@pytest.mark.parametrize("swap", ["auto", "rename"])
def test_interrupted_swap_is_completed_by_the_next_run(efs: EFS, swap: str, monkeypatch) -> None:
    ok(efs.release("r1", version(1)))
    staging = efs.stage("r2", version(2))
    staging_path = str(efs.root / staging)
    real_rename = os.rename

    def crash_on_staging(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        if str(src) == staging_path:
            raise KeyboardInterrupt("simulated crash")
        real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", crash_on_staging)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(efs, target=PKG, staging=staging, release_id="r2", swap=swap)
    monkeypatch.setattr(os, "rename", real_rename)
    if swap == "rename":
        assert not (efs.root / PKG).exists()  # crashed between the two renames
    else:
        assert snapshot(efs.root / PKG) == snapshot_of(version(2))  # exchanged, not yet retired

    again = ok(efs.run({"target": PKG, "staging": staging, "release_id": "r2"}))
    assert "completed the interrupted release of r2" in again["recovered"]
    assert again["release_id"] == "r2" and again["releases"] == ["r1"]
    assert snapshot(efs.root / PKG) == snapshot_of(version(2))
    assert snapshot(efs.key_dir() / "r1") == snapshot_of(version(1))
    history = json.loads((efs.key_dir() / "history.json").read_text())
    assert "pending" not in history and history["live"]["release_id"] == "r2"


def test_crash_before_the_swap_is_undone(efs: EFS, monkeypatch) -> None:
    write_tree(efs.root / "data/reefguide", {"config.toml": b"old\n", "cache/a": b"cache"})
    staging = efs.stage("r1", {"config.toml": b"new\n"})
    target = str(efs.root / "data/reefguide")
    real_rename = os.rename

    def crash_on_swap(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        if str(dst) == target or str(src) == target:
            raise KeyboardInterrupt("simulated crash")
        real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", crash_on_swap)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(efs, target="data/reefguide", staging=staging, release_id="r1", swap="rename")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (efs.root / "data/reefguide/cache").exists()  # it had moved into staging

    pruned = ok(efs.run({"target": "data/reefguide", "state": "pruned"}))
    assert "undid the interrupted release of r1" in pruned["recovered"]
    assert (efs.root / "data/reefguide/cache/a").read_bytes() == b"cache"
    assert not (efs.root / staging / "cache").exists()


def test_target_key_keeps_targets_apart() -> None:
    assert target_key("data/reefguide") == "data%2Freefguide"
    assert target_key("a%2Fb") != target_key("a/b")
    with pytest.raises(UnsafePathError):
        target_key("../x")


def test_a_target_that_is_a_file_is_refused_with_the_way_to_replace_it(efs: EFS) -> None:
    """A stage onto a file that no record knew of fails at the release (the controller refuses it
    earlier when a record lists the file): nothing changes, and the message says how to replace it."""
    ok(efs.release("p1", version(1)))
    name = sorted(version(1))[0]
    result = efs.release("p2", {"x.tif": b"new"}, target="%s/%s" % (PKG, name))
    assert result.get("failed") and "exists and is not a directory" in result["msg"], result
    assert "mode=merge" in result["msg"] and result.get("live_changed") is False, result
    assert snapshot(efs.root / PKG) == snapshot_of(version(1))


def test_staged_copy_of_a_separately_released_target_is_refused(efs: EFS) -> None:
    ok(efs.release("p1", version(1)))
    staged = {"config.toml": b"new\n"}
    staged.update({"adria/datapackages/Moore_2025-01-17_v070_rc1/" + k: v for k, v in version(2).items()})
    staging = efs.stage("c1", staged)
    result = efs.run({"target": "data/reefguide", "staging": staging})
    assert result.get("failed") and "released separately" in result["msg"] and PKG in result["msg"]
    assert snapshot(efs.root / PKG) == snapshot_of(version(1))



def test_a_concurrent_run_is_refused_after_the_lock_timeout(efs: EFS) -> None:
    import fcntl

    ok(efs.release("r1", version(1)))
    staging = efs.stage("r2", version(2))
    fd = os.open(efs.key_dir() / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = efs.run({"target": PKG, "staging": staging, "lock_timeout": 1})
    finally:
        os.close(fd)
    assert result.get("failed") and "holds the lock" in result["msg"]
    assert snapshot(efs.root / PKG) == snapshot_of(version(1)) and (efs.root / staging).is_dir()


def test_nothing_is_created_for_a_target_that_was_never_released(efs: EFS) -> None:
    pruned = ok(efs.run({"target": PKG, "state": "pruned"}))
    assert pruned["changed"] is False and pruned["pruned"] == []
    back = efs.run({"target": PKG, "state": "rolled_back"})
    assert back.get("failed") and "no previous release" in back["msg"]
    assert not (efs.root / RELEASES).exists()


def test_owner_and_group_are_applied_to_the_staged_files(efs: EFS) -> None:
    staging = efs.stage("r1", version(1))
    args = {"target": PKG, "staging": staging, "owner": "nobody", "group": "nogroup"}
    predicted = ok(efs.run(args, check=True))
    assert predicted["chowned"] == 8  # 4 files, 4 directories (top, spatial, results, odd)
    assert os.stat(efs.root / staging / "datapackage.json").st_uid == 0
    result = ok(efs.run(args))
    assert result["chowned"] == predicted["chowned"]
    for dirpath, dirnames, filenames in os.walk(efs.root / PKG):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            assert os.lstat(name).st_uid == 65534, name


# --------------------------------------------------------------------------
# Bytes freed: releases are hard-link copies of each other
# --------------------------------------------------------------------------


def test_staging_area_is_deleted_after_the_release_in_the_same_call(efs: EFS) -> None:
    """The run's staging area goes with its release (a step of its own cost a second of CPU a
    stage): after an in-place release the staged tree stays in it, hard-linked into the target."""
    ok(efs.release("r1", version(1)))
    efs.stage("r2", version(2))
    (efs.root / ".reefguide-staging/r2/leftover.tmp").write_bytes(b"left by the pull")
    done = ok(efs.run({"target": PKG, "staging": ".reefguide-staging/r2/pkg", "release_id": "r2",
                       "staging_area": ".reefguide-staging/r2", "swap": "in_place"}))
    # freed: the leftover alone; the staged files are still linked from the target
    assert done["swap_method"] == "in_place" and done["staging_area_removed"]["files"] == 1
    assert not (efs.root / ".reefguide-staging/r2").exists()
    assert snapshot(efs.root / PKG) == snapshot_of(version(2))
    # refused before anything changes: an area that does not hold staging
    efs.stage("r3", version(3))
    for area in (".reefguide-staging/other", "data", PKG):
        res = efs.run({"target": PKG, "staging": ".reefguide-staging/r3/pkg", "release_id": "r3",
                       "staging_area": area})
        assert res.get("failed") and "does not hold staging" in res["msg"], res
    assert snapshot(efs.root / PKG) == snapshot_of(version(2)) and (efs.root / ".reefguide-staging/r3/pkg").is_dir()
