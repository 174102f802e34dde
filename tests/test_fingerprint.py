"""The fingerprint of a destination's tree (module_utils/reefguide/fingerprint.py): what changes it
and what must not (our hard-link staging copies, the workers' cache), through efs_usage's walk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import run_module

DEST = "data/reefguide"


@pytest.fixture()
def efs(tmp_path: Path) -> Path:
    root = tmp_path / "efs"
    (root / DEST / "cache").mkdir(parents=True)
    (root / DEST / "config.toml").write_text("a = 1\n")
    (root / DEST / "layers").mkdir()
    (root / DEST / "layers" / "depth.tif").write_bytes(b"\x01" * 1000)
    (root / "data" / "other").mkdir()
    return root


def prints(root: Path, *dests: str) -> dict:
    r = run_module("efs_usage", {"root": str(root), "fingerprint": list(dests)})
    assert not r.get("failed"), r
    return r["fingerprints"]


def test_what_a_hand_edit_changes(efs: Path) -> None:
    before = prints(efs, DEST)[DEST]
    assert prints(efs, DEST)[DEST] == before  # the same tree, the same fingerprint
    f = efs / DEST / "layers" / "depth.tif"
    st = f.stat()
    # rewritten in place to the same size (the same inode): its mtime moves
    f.write_bytes(b"\x02" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    edited = prints(efs, DEST)[DEST]
    assert edited != before
    # a copy over it that keeps the old mtime (cp -p) is a new inode
    shutil.copy2(f, efs / "tmp.tif")
    os.utime(efs / "tmp.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    os.replace(efs / "tmp.tif", f)
    assert prints(efs, DEST)[DEST] != edited
    # a file added, a directory added, a file removed
    for change in (lambda: (efs / DEST / "new.csv").write_text("x"),
                   lambda: (efs / DEST / "newdir").mkdir(),
                   lambda: (efs / DEST / "config.toml").unlink()):
        was = prints(efs, DEST)[DEST]
        change()
        assert prints(efs, DEST)[DEST] != was


def test_what_must_not_change_it(efs: Path) -> None:
    before = prints(efs, DEST)[DEST]
    # the workers write their cache all the time
    (efs / DEST / "cache" / "tile-1.bin").write_bytes(b"c" * 10)
    # our staging copy hard-links every file (their ctime changes), elsewhere on EFS
    staging = efs / ".reefguide-staging" / "k"
    staging.mkdir(parents=True)
    os.link(efs / DEST / "config.toml", staging / "config.toml")
    # a read changes atime only
    (efs / DEST / "config.toml").read_bytes()
    assert prints(efs, DEST)[DEST] == before


def test_nested_destinations_and_a_missing_one(efs: Path) -> None:
    got = prints(efs, DEST, DEST + "/layers", "data/gone", "data/other")
    assert got["data/gone"] == "absent"
    assert len({got[DEST], got[DEST + "/layers"], got["data/other"]}) == 3
    (efs / DEST / "layers" / "depth.tif").write_bytes(b"\x03" * 5)
    after = prints(efs, DEST, DEST + "/layers", "data/other")
    assert after[DEST] != got[DEST] and after[DEST + "/layers"] != got[DEST + "/layers"]
    assert after["data/other"] == got["data/other"]


def test_usage_is_counted_as_before(efs: Path) -> None:
    os.link(efs / DEST / "layers" / "depth.tif", efs / "data" / "other" / "same.tif")
    r = run_module("efs_usage", {"root": str(efs)})
    assert (r["bytes"], r["files"], r["fingerprints"]) == (1006, 2, {})
    assert r["areas"] == {"data": 1006}
    # a kept release sharing a live file (hard link): the live tree keeps the credit, the release
    # holds only its own bytes (before: sorted by name, .reefguide-releases took the live file's)
    kept = efs / ".reefguide-releases" / "key" / "r1"
    kept.mkdir(parents=True)
    os.link(efs / DEST / "layers" / "depth.tif", kept / "depth.tif")
    (kept / "old.csv").write_bytes(b"o" * 7)
    r = run_module("efs_usage", {"root": str(efs)})
    assert list(r["areas"].items()) == [("data", 1006), (".reefguide-releases", 7)], r["areas"]


def test_a_bad_destination_is_refused(efs: Path) -> None:
    r = run_module("efs_usage", {"root": str(efs), "fingerprint": ["../etc"]})
    assert r.get("failed") and "fingerprint" in r["msg"], r
