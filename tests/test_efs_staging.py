"""efs_staging: a hard-link copy of the live target; writing to staging never touches live."""

from __future__ import annotations

import os

from helpers import run_module


def test_staging_is_a_hard_link_copy_without_the_cache(tmp_path) -> None:
    root = tmp_path / "efs"
    live = root / "data" / "reefguide"
    (live / "cache").mkdir(parents=True)
    (live / "cache" / "c.bin").write_bytes(b"cache")
    (live / "rasters").mkdir()
    (live / "rasters" / "a.tif").write_bytes(b"A" * 100)
    (live / "link").symlink_to("rasters/a.tif")
    args = {"root": str(root), "target": "data/reefguide", "staging": ".reefguide-staging/r1/data/reefguide",
            "exclude": ["cache"]}
    plan = run_module("efs_staging", args, check=True)
    assert plan["changed"] and not (root / ".reefguide-staging").exists()
    res = run_module("efs_staging", args)
    assert res["changed"] and res["linked"] == 1 and res["bytes_linked"] == 100
    staged = root / ".reefguide-staging" / "r1" / "data" / "reefguide"
    assert os.stat(staged / "rasters" / "a.tif").st_ino == os.stat(live / "rasters" / "a.tif").st_ino
    assert os.readlink(staged / "link") == "rasters/a.tif"
    assert not (staged / "cache").exists()
    # a re-run resumes in the existing staging directory
    assert run_module("efs_staging", args)["changed"] is False
    # replacing a staged file by rename leaves the live one alone
    (staged / "rasters" / "new").write_bytes(b"B")
    os.replace(staged / "rasters" / "new", staged / "rasters" / "a.tif")
    assert (live / "rasters" / "a.tif").read_bytes() == b"A" * 100
    gone = run_module("efs_staging", dict(args, state="absent"))
    assert gone["changed"] and not staged.exists() and (live / "rasters" / "a.tif").exists()


def test_missing_target_gives_an_empty_staging_and_escapes_are_refused(tmp_path) -> None:
    root = tmp_path / "efs"
    root.mkdir()
    res = run_module("efs_staging", {"root": str(root), "target": "data/reefguide/new", "staging": ".s/new"})
    assert res["changed"] and (root / ".s" / "new").is_dir()
    (root / "out").symlink_to(tmp_path)
    res = run_module("efs_staging", {"root": str(root), "target": "data/x", "staging": "out/s"})
    assert res.get("failed") and "symlink" in res["msg"]
    res = run_module("efs_staging", {"root": str(root), "target": "../x", "staging": ".s/x"})
    assert res.get("failed") and ".." in res["msg"]
