"""efs_release of the workers' root (data/reefguide, or an ancestor): the directory stays, its
contents are swapped entry by entry. Through ansible on localhost with the instance's python, as
test_efs_release.py; the interrupted cases run the engine in-process and fail one step."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.reefguide.fs import clone
from test_efs_release import EFS, PKG, ok, run_in_process, snapshot, write_tree

ROOT = "data/reefguide"
OLD = {"config.toml": b"version = 1\n", "layers/depth.tif": b"d" * 500, "layers/old.tif": b"gone soon",
       "rules/a.csv": b"a,1\n"}
NEW = {"config.toml": b"version = 2\n", "layers/depth.tif": b"d" * 500, "layers/slope.tif": b"s" * 300,
       "criteria/reefs.gpkg": b"g" * 200, "rules": b"now a file"}


@pytest.fixture
def efs(tmp_path: Path) -> EFS:
    return EFS(tmp_path)


def inodes(top: Path, paths: list[str]) -> dict[str, int]:
    return {p: os.lstat(top / p).st_ino for p in paths}


def tree_of(efs: EFS, name: str, files: dict[str, bytes]) -> dict[str, Any]:
    """What a tree of these files looks like to snapshot()."""
    return snapshot(efs.root / efs.stage(name, files))


def stage_like_efs_staging(efs: EFS, run_id: str, files: dict[str, bytes], leave_out: set[str]) -> str:
    """A hard-link copy of the live root (as efs_staging makes it), then changed as a pull changes
    it: new content renamed into place, files and directories that the new version lacks deleted."""
    rel = ".reefguide-staging/%s/%s" % (run_id, ROOT)
    top = efs.root / rel
    top.parent.mkdir(parents=True)
    clone(str(efs.root / ROOT), str(top), leave_out)
    have = snapshot(top)
    for path in sorted(have, key=len, reverse=True):
        if have[path] != "dir" and path not in files:
            (top / path).unlink()
        elif have[path] == "dir" and not any(f.startswith(path + "/") for f in files):
            (top / path).rmdir()
    for path, data in files.items():
        if have.get(path) != data:
            tmp = top / (path + ".tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.rename(tmp, top / path)
    return rel


def live_with_package(efs: EFS) -> None:
    ok(efs.release("pkg1", {"datapackage.json": b"{}", "data/a.nc": b"nc"}, target=PKG))
    write_tree(efs.root / ROOT, dict(OLD, **{"cache/tile": b"cached"}))


def test_a_release_of_the_workers_root_keeps_every_directory_a_worker_holds(efs: EFS) -> None:
    live_with_package(efs)
    live = efs.root / ROOT
    held = ["", "layers", "cache", "adria", "adria/datapackages", PKG[len(ROOT) + 1:]]
    before = inodes(live, held)
    config_fd = os.open(live / "config.toml", os.O_RDONLY)  # a worker reading the old config
    layers_fd = os.open(live / "layers", os.O_RDONLY | os.O_DIRECTORY)  # and holding a directory
    staging = stage_like_efs_staging(efs, "r1", NEW, {"cache", PKG[len(ROOT) + 1:]})
    result = ok(efs.run({"target": ROOT, "staging": staging, "release_id": "r1"}))

    assert result["swap_method"] == "in_place"
    assert inodes(live, held) == before
    assert sorted(os.listdir(layers_fd)) == ["depth.tif", "slope.tif"]  # the held directory shows the new version
    assert os.read(config_fd, 100) == b"version = 1\n"  # an open file keeps its bytes
    os.close(config_fd)
    os.close(layers_fd)
    now = snapshot(live)
    assert {k: v for k, v in now.items() if not k.startswith(("cache", "adria"))} == tree_of(efs, "x", NEW)
    assert now["cache/tile"] == b"cached" and (live / PKG[len(ROOT) + 1:] / "data/a.nc").read_bytes() == b"nc"
    # the previous version is kept for rollback, without the cache and the separately released package
    kept = efs.key_dir(ROOT) / result["previous_release_id"]
    assert {k: v for k, v in snapshot(kept).items() if k != "adria" and not k.startswith("adria/")} == \
        {"config.toml": OLD["config.toml"], "layers": "dir", "layers/depth.tif": OLD["layers/depth.tif"],
         "layers/old.tif": b"gone soon", "rules": "dir", "rules/a.csv": b"a,1\n"}
    assert not (efs.root / staging).exists()
    assert not (efs.key_dir(ROOT) / ".in-place").exists()
    history = json.loads((efs.key_dir(ROOT) / "history.json").read_text())
    assert history["live"]["ino"] == before[""] and "pending" not in history


def test_rollback_and_prune_work_in_place(efs: EFS) -> None:
    live_with_package(efs)
    live = efs.root / ROOT
    root_ino = os.lstat(live).st_ino
    staging = stage_like_efs_staging(efs, "r1", NEW, {"cache", PKG[len(ROOT) + 1:]})
    first = ok(efs.run({"target": ROOT, "staging": staging, "release_id": "r1"}))
    layers_ino = os.lstat(live / "layers").st_ino

    back = ok(efs.run({"target": ROOT, "state": "rolled_back"}))
    assert back["swap_method"] == "in_place" and back["release_id"] == first["previous_release_id"]
    assert os.lstat(live).st_ino == root_ino and os.lstat(live / "layers").st_ino == layers_ino
    assert (live / "config.toml").read_bytes() == OLD["config.toml"] and (live / "rules/a.csv").is_file()
    assert not (live / "layers/slope.tif").exists() and (live / "cache/tile").read_bytes() == b"cached"
    assert back["releases"] == ["r1"]

    forward = ok(efs.run({"target": ROOT, "state": "rolled_back", "release_id": "r1"}))
    assert forward["swap_method"] == "in_place" and (live / "config.toml").read_bytes() == NEW["config.toml"]
    pruned = ok(efs.run({"target": ROOT, "state": "pruned", "keep": 0}))
    assert pruned["pruned"] and os.lstat(live).st_ino == root_ino
    assert (live / "config.toml").read_bytes() == NEW["config.toml"] and (live / "cache/tile").exists()


def test_an_ancestor_target_keeps_the_workers_root(efs: EFS) -> None:
    write_tree(efs.root / "data", {"other.txt": b"1", "reefguide/config.toml": b"v1", "reefguide/cache/c": b"c"})
    root_ino = os.lstat(efs.root / ROOT).st_ino
    staging = efs.stage("r1", {"other.txt": b"2"}, name="data")  # no reefguide/ in the staged version
    result = ok(efs.run({"target": "data", "staging": staging, "release_id": "r1"}))
    assert result["swap_method"] == "in_place"
    assert os.lstat(efs.root / ROOT).st_ino == root_ino and (efs.root / ROOT / "cache/c").read_bytes() == b"c"
    assert not (efs.root / ROOT / "config.toml").exists() and (efs.root / "data/other.txt").read_bytes() == b"2"
    kept = efs.key_dir("data") / result["previous_release_id"]
    assert (kept / "reefguide/config.toml").read_bytes() == b"v1"


def test_other_destinations_keep_the_whole_directory_swap(efs: EFS) -> None:
    ok(efs.release("p1", {"a": b"1"}))
    ino = os.lstat(efs.root / PKG).st_ino
    result = ok(efs.release("p2", {"a": b"2"}))
    assert result["swap_method"] in ("exchange", "two_renames") and os.lstat(efs.root / PKG).st_ino != ino


def crash_after(n: int, real: Any, when: Any) -> Any:
    calls = {"n": 0}

    def fake(src: Any, dst: Any, *a: Any, **kw: Any) -> Any:
        if when(str(src), str(dst)):
            calls["n"] += 1
            if calls["n"] > n:
                raise KeyboardInterrupt("simulated crash")
        return real(src, dst, *a, **kw)
    return fake


def test_a_crash_halfway_through_the_swap_is_completed_by_the_next_run(efs: EFS, monkeypatch) -> None:
    write_tree(efs.root / ROOT, dict(OLD, **{"cache/tile": b"cached"}))
    staging = stage_like_efs_staging(efs, "r1", NEW, {"cache"})
    live = str(efs.root / ROOT)
    monkeypatch.setattr(os, "rename", crash_after(2, os.rename, lambda s, d: d.startswith(live + "/")))
    with pytest.raises(KeyboardInterrupt):
        run_in_process(efs, target=ROOT, staging=staging, release_id="r1")
    monkeypatch.undo()
    assert (efs.root / ROOT / "cache/tile").exists()
    again = ok(efs.run({"target": ROOT, "state": "pruned"}))
    assert "completed the interrupted release of r1 (in place)" in again["recovered"]
    now = snapshot(efs.root / ROOT)
    assert now.pop("cache") == "dir" and now.pop("cache/tile") == b"cached"
    assert now == tree_of(efs, "x", NEW)
    kept = efs.key_dir(ROOT) / again["releases"][0]
    assert snapshot(kept) == tree_of(efs, "y", OLD)
    assert not (efs.root / staging).exists()


def test_a_crash_while_the_previous_version_is_copied_is_undone(efs: EFS, monkeypatch) -> None:
    write_tree(efs.root / ROOT, dict(OLD, **{"cache/tile": b"cached"}))
    before = snapshot(efs.root / ROOT)
    staging = stage_like_efs_staging(efs, "r1", NEW, {"cache"})
    key_dir = str(efs.key_dir(ROOT))
    monkeypatch.setattr(os, "link", crash_after(1, os.link, lambda s, d: d.startswith(key_dir + "/")))
    with pytest.raises(KeyboardInterrupt):
        run_in_process(efs, target=ROOT, staging=staging, release_id="r1")
    monkeypatch.undo()
    undone = ok(efs.run({"target": ROOT, "state": "pruned"}))
    assert "undid the interrupted release of r1" in undone["recovered"]
    assert snapshot(efs.root / ROOT) == before and undone["releases"] == []
    redo = ok(efs.run({"target": ROOT, "staging": staging, "release_id": "r1"}))
    assert redo["swap_method"] == "in_place" and (efs.root / ROOT / "config.toml").read_bytes() == NEW["config.toml"]
