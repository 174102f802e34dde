"""efs_tidy deletes only inside the allowed roots and never follows a symlink out."""

from __future__ import annotations

import os
import subprocess

from helpers import run_module


def make_efs(tmp_path):
    root = tmp_path / "efs"
    (root / "data" / "reefguide" / "cache").mkdir(parents=True)
    (root / "data" / "reefguide" / "cache" / "tile.bin").write_bytes(b"x" * 1000)
    (root / "data" / "reefguide" / "old").mkdir()
    (root / "data" / "reefguide" / "old" / "a.tif").write_bytes(b"y" * 500)
    (root / ".reefguide-staging" / "run1").mkdir(parents=True)
    (root / ".reefguide-staging" / "run1" / "f").write_bytes(b"z" * 10)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    return root, outside


def test_check_mode_lists_sizes_then_real_run_deletes_exactly_that(tmp_path) -> None:
    root, _ = make_efs(tmp_path)
    args = {"root": str(root), "remove": [".reefguide-staging", "data/reefguide/old", "data/reefguide/gone"],
            "empty": ["data/reefguide/cache"]}
    plan = run_module("efs_tidy", args, check=True, diff=True)
    assert plan["changed"] and plan["bytes_freed"] == 1510 and plan["files_removed"] == 3
    assert (root / "data" / "reefguide" / "old" / "a.tif").exists(), "check mode deleted something"
    done = run_module("efs_tidy", args)
    assert done["removed"] == plan["removed"] and done["bytes_freed"] == plan["bytes_freed"]
    assert not (root / ".reefguide-staging").exists() and not (root / "data" / "reefguide" / "old").exists()
    assert (root / "data" / "reefguide" / "cache").is_dir()
    assert os.listdir(root / "data" / "reefguide" / "cache") == []
    again = run_module("efs_tidy", args)
    assert again["changed"] is False and again["bytes_freed"] == 0


def test_refuses_paths_outside_allowed_roots_and_deletes_nothing(tmp_path) -> None:
    root, _ = make_efs(tmp_path)
    for bad in ("../precious", "/etc", "data", "data/reefguide/../../precious", "data/other"):
        res = run_module("efs_tidy", {"root": str(root), "remove": [".reefguide-staging", bad]})
        assert res.get("failed") and "nothing deleted" in res["msg"], (bad, res)
        assert (root / ".reefguide-staging" / "run1" / "f").exists()


def test_the_workers_root_its_cache_and_what_holds_them_are_refused_however_reached(tmp_path) -> None:
    """Issue 23: the instance side refuses them too, even with the allowed roots widened to 'data'."""
    root, _ = make_efs(tmp_path)
    (root / "data" / "reefguide" / "self").symlink_to(".")  # data/reefguide/self/cache is the cache
    (root / "data" / "up").symlink_to("reefguide")
    cases = {
        "data/reefguide": "is the workers' root", "data/reefguide/.": "is the workers' root",
        "data/reefguide/": "is the workers' root", "data": "holds the workers' root",
        "data/reefguide/cache": "workers' cache", "data/reefguide/cache/tile.bin": "inside the workers' cache",
        "data/reefguide/self/cache": "leads through a symlink to data/reefguide/cache",
        "data/up/cache/tile.bin": "leads through a symlink to data/reefguide/cache/tile.bin",
    }
    for bad, words in cases.items():
        res = run_module("efs_tidy", {"root": str(root), "allowed_roots": ["data"],
                                      "remove": ["data/reefguide/old", bad]})
        assert res.get("failed") and "nothing deleted" in res["msg"] and words in res["msg"], (bad, res)
        assert (root / "data" / "reefguide" / "old" / "a.tif").exists()
        assert (root / "data" / "reefguide" / "cache" / "tile.bin").exists()
    for bad in ("data/reefguide", "data", "data/reefguide/cache/sub"):
        res = run_module("efs_tidy", {"root": str(root), "empty": [bad]})
        assert res.get("failed") and "nothing deleted" in res["msg"], (bad, res)
    assert (root / "data" / "reefguide" / "cache" / "tile.bin").exists()
    # the symlinks themselves are not the root: removed as links
    res = run_module("efs_tidy", {"root": str(root), "allowed_roots": ["data"], "remove": ["data/up"]})
    assert res["changed"] and not os.path.lexists(root / "data" / "up")
    assert (root / "data" / "reefguide" / "cache" / "tile.bin").exists()


def test_symlinks_are_removed_as_links_never_followed(tmp_path) -> None:
    root, outside = make_efs(tmp_path)
    (root / "data" / "reefguide" / "link").symlink_to(outside)
    (root / "data" / "reefguide" / "old" / "inner").symlink_to(outside / "keep.txt")
    res = run_module("efs_tidy", {"root": str(root), "remove": ["data/reefguide/link", "data/reefguide/old"]})
    assert res["changed"] and not res.get("failed")
    assert (outside / "keep.txt").read_text() == "keep"
    assert not os.path.lexists(root / "data" / "reefguide" / "link")
    # a parent that is a symlink out of the root is refused
    (root / "data" / "reefguide" / "escape").symlink_to(outside)
    res = run_module("efs_tidy", {"root": str(root), "remove": ["data/reefguide/escape/keep.txt"]})
    assert res.get("failed") and "symlink" in res["msg"]
    assert (outside / "keep.txt").exists()


def test_missing_root_says_mount_first(tmp_path) -> None:
    res = run_module("efs_tidy", {"root": str(tmp_path / "nope"), "remove": ["data/reefguide/x"]})
    assert res.get("failed") and "mounted" in res["msg"]


def test_bytes_freed_counts_a_hard_linked_file_only_when_its_last_link_goes(tmp_path) -> None:
    root, _ = make_efs(tmp_path)
    live = root / "data" / "reefguide" / "old" / "a.tif"  # 500 bytes
    os.link(live, root / ".reefguide-staging" / "run1" / "a.tif")  # still linked from live after the removal
    (root / "data" / "reefguide" / "twice").mkdir()
    os.link(root / ".reefguide-staging" / "run1" / "f", root / "data" / "reefguide" / "twice" / "f")
    args = {"root": str(root), "remove": [".reefguide-staging", "data/reefguide/twice"]}
    plan = run_module("efs_tidy", args, check=True)
    done = run_module("efs_tidy", args)
    # f (10 bytes) goes with its two links; a.tif stays live; the files count is of names deleted
    assert plan["bytes_freed"] == done["bytes_freed"] == 10
    assert done["files_removed"] == 3 and live.read_bytes() == b"y" * 500
    assert [r["bytes"] for r in done["removed"]] == [0, 10]


def test_with_require_mount_nothing_is_written_once_efs_is_unmounted(tmp_path) -> None:
    """After another run (or a person) unmounted EFS, its mount point is an empty directory on the
    instance's own disk: every module that writes refuses it instead of writing there."""
    root = tmp_path / "efs"
    (root / "data/reefguide/old").mkdir(parents=True)
    for module, args in (("efs_tidy", {"remove": ["data/reefguide/old"]}),
                         ("efs_staging", {"target": "data/reefguide/x", "staging": ".reefguide-staging/k/x"}),
                         ("efs_release", {"state": "pruned", "keep": 1})):
        r = run_module(module, dict(args, root=str(root), require_mount=True))
        assert r.get("failed") and "EFS is no longer mounted at %s" % root in r["msg"], (module, r)
    for module, args in (("s3_sync", {"direction": "pull", "bucket": "b", "path": str(root / "data/reefguide/x"),
                                      "require_mount": str(root)}),):
        r = run_module(module, args)
        assert r.get("failed") and "EFS is no longer mounted at %s" % root in r["msg"], (module, r)
    assert sorted(p.name for p in root.rglob("*")) == ["data", "old", "reefguide"]


def test_with_require_mount_a_mounted_root_is_used(tmp_path) -> None:
    root = tmp_path / "efs"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root)], check=True)
    try:
        (root / "data/reefguide/old").mkdir(parents=True)
        r = run_module("efs_tidy", {"root": str(root), "remove": ["data/reefguide/old"], "require_mount": True})
        assert not r.get("failed") and not (root / "data/reefguide/old").exists(), r
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_released_data_in_a_removal_is_kept_as_a_release_that_rollback_brings_back(tmp_path) -> None:
    """Issue 23: a remove that reaches a destination with releases of its own (or holds one) keeps
    each version as a release instead of deleting it; check mode says so, with the bytes of each."""
    root, _ = make_efs(tmp_path)
    pkg, inner = "data/reefguide/pkg", "data/reefguide/adria/datapackages/p2"
    for target, size in ((pkg, 300), (inner, 40)):
        staging = root / ".reefguide-staging" / "s" / target.rsplit("/", 1)[1]
        staging.mkdir(parents=True)
        (staging / "layer.tif").write_bytes(b"p" * size)
        done = run_module("efs_release", {"root": str(root), "target": target, "release_id": "r1",
                                          "staging": str(staging.relative_to(root))})
        assert not done.get("failed"), done
    (root / "data" / "reefguide" / "adria" / "notes.txt").write_bytes(b"n" * 7)  # not released: deleted
    args = {"root": str(root), "remove": [pkg, "data/reefguide/adria"]}
    plan = run_module("efs_tidy", args, check=True)
    kept = [(k["target"], k["release_id"], k["bytes"]) for k in plan["kept_as_release"]]
    assert kept == [(pkg, "r1", 300), (inner, "r1", 40)], plan
    assert plan["removed"] == [{"path": "data/reefguide/adria", "files": 1, "bytes": 7}], plan["removed"]
    assert (root / pkg / "layer.tif").exists() and (root / inner / "layer.tif").exists()

    done = run_module("efs_tidy", args)
    assert done["kept_as_release"] == plan["kept_as_release"] and done["removed"] == plan["removed"], done
    assert not (root / pkg).exists() and not (root / "data" / "reefguide" / "adria").exists()
    back = run_module("efs_release", {"root": str(root), "target": inner, "state": "rolled_back"})
    assert not back.get("failed") and back["release_id"] == "r1", back
    assert (root / inner / "layer.tif").read_bytes() == b"p" * 40
    assert run_module("efs_release", {"root": str(root), "target": pkg, "state": "rolled_back"})["release_id"] == "r1"
    assert (root / pkg / "layer.tif").read_bytes() == b"p" * 300
