"""efs_release's pruning: keep, the bytes a prune frees (releases share hard links), pruning every
target at teardown, and a prune that is cut short or meets a file still open (test_efs_release.py
has the releases and rollbacks themselves)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.reefguide.releases_store import ReleaseError
from test_efs_release import EFS, PKG, ok, run_in_process, snapshot, snapshot_of, version, write_tree


@pytest.fixture
def efs(tmp_path: Path) -> EFS:
    return EFS(tmp_path)


def test_release_prunes_to_keep_and_pruned_state_frees_bytes(efs: EFS) -> None:
    for n in range(1, 5):
        ok(efs.release("r%d" % n, version(n), keep=5))
    assert sorted(os.listdir(efs.key_dir())) == [".lock", "history.json", "r1", "r2", "r3"]
    sizes = {n: sum(len(b) for b in version(n).values()) for n in (1, 2)}

    predicted = ok(efs.run({"target": PKG, "state": "pruned", "keep": 1}, check=True, diff=True))
    assert [p["release_id"] for p in predicted["pruned"]] == ["r2", "r1"]
    assert predicted["bytes_freed"] == sizes[1] + sizes[2]
    assert "pruned: r2, r1" in predicted["diff"]["after"]
    assert (efs.key_dir() / "r1").is_dir()

    pruned = ok(efs.run({"target": PKG, "state": "pruned", "keep": 1}))
    assert pruned["changed"] is True and pruned["pruned"] == predicted["pruned"]
    assert pruned["bytes_freed"] == predicted["bytes_freed"]
    assert pruned["releases"] == ["r3"]
    assert sorted(os.listdir(efs.key_dir())) == [".lock", "history.json", "r3"]
    assert ok(efs.run({"target": PKG, "state": "pruned", "keep": 1}))["changed"] is False

    # A release with the default keep (2) prunes as it goes.
    fifth = ok(efs.release("r5", version(5), keep=1))
    assert [p["release_id"] for p in fifth["pruned"]] == ["r3"] and fifth["releases"] == ["r4"]


def test_a_prune_cut_halfway_leaves_nothing_a_rollback_can_restore(efs: EFS, monkeypatch) -> None:
    for n in range(1, 4):
        ok(efs.release("r%d" % n, version(n), keep=5))  # r3 live, r2 and r1 kept
    real_unlink = os.unlink
    calls: list[Any] = []

    def cut(path: Any, *a: Any, **kw: Any) -> None:  # the instance lost halfway through deleting r2
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error", str(path))
        real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", cut)
    with pytest.raises(ReleaseError, match="Input/output error"):
        run_in_process(efs, target=PKG, state="pruned", keep=0)
    monkeypatch.undo()
    history = json.loads((efs.key_dir() / "history.json").read_text())
    assert [r["release_id"] for r in history["releases"]] == ["r1"]
    assert sorted(os.listdir(efs.key_dir())) == [".lock", ".pruning-r2", "history.json", "r1"]
    back = efs.run({"target": PKG, "state": "rolled_back", "release_id": "r2"})  # half deleted: not offered
    assert back.get("failed") and snapshot(efs.root / PKG) == snapshot_of(version(3)), back
    again = ok(efs.run({"target": PKG, "state": "pruned", "keep": 0}))  # sweeps what the cut prune left
    assert [p["release_id"] for p in again["pruned"]] == ["r1"] and again["bytes_freed"] > 0
    assert sorted(os.listdir(efs.key_dir())) == [".lock", "history.json"]


def test_a_file_still_open_in_a_pruned_release_is_left_for_a_later_prune(efs: EFS, monkeypatch) -> None:
    """On NFS a file deleted while this instance holds it open becomes .nfsXXXX, and removing that
    name fails (EBUSY) until it is closed: the prune goes on, and a later one sweeps it."""
    for n in (1, 2):
        ok(efs.release("r%d" % n, version(n), keep=5))
    held = efs.key_dir() / "r1" / "spatial" / ".nfs0000000000a1b2c300000001"
    held.write_bytes(b"still open")
    real_unlink = os.unlink

    def busy(path: Any, *a: Any, **kw: Any) -> None:
        if os.path.basename(str(path)).startswith(".nfs"):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", busy)
    pruned = ok(run_in_process(efs, target=PKG, state="pruned", keep=0))
    assert [p["release_id"] for p in pruned["pruned"]] == ["r1"]
    left = efs.key_dir() / ".pruning-r1"
    assert [p.name for p in left.rglob("*") if p.is_file()] == [held.name]
    monkeypatch.undo()  # closed now
    ok(run_in_process(efs, target=PKG, state="pruned", keep=0))
    assert not left.exists() and snapshot(efs.root / PKG) == snapshot_of(version(2))


def test_teardown_prunes_every_target_and_removes_staging_leftovers(efs: EFS) -> None:
    for n in (1, 2, 3):
        ok(efs.release("p%d" % n, version(n)))
        ok(efs.release("c%d" % n, {"config.toml": b"%d" % n}, target="data/reefguide"))
    efs.stage("leftover", version(9))
    # Releasing data/reefguide carried the separately released package over.
    assert snapshot(efs.root / PKG) == snapshot_of(version(3))
    pkg_history = json.loads((efs.key_dir() / "history.json").read_text())
    assert pkg_history["live"]["release_id"] == "p3"
    result = ok(efs.run({"state": "pruned", "keep": 0, "staging": ".reefguide-staging"}))
    pruned = sorted((p["target"], p["release_id"]) for p in result["pruned"])
    # (data/reefguide's first release retired an 'unrecorded-' version, pruned by the third: keep 2.)
    assert pruned == [("data/reefguide", "c1"), ("data/reefguide", "c2"), (PKG, "p1"), (PKG, "p2")]
    assert result["staging_removed"] is True
    assert not (efs.root / ".reefguide-staging").exists()
    assert snapshot(efs.root / PKG) == snapshot_of(version(3))
    assert (efs.root / "data/reefguide/cache").is_dir()
    assert ok(efs.run({"state": "pruned", "keep": 0, "staging": ".reefguide-staging"}))["changed"] is False

    refused = efs.run({"state": "pruned", "staging": "data"})
    assert refused.get("failed") and "overlaps" in refused["msg"]
    assert (efs.root / PKG).is_dir()


# --------------------------------------------------------------------------
# Interrupted swaps: run the engine in-process and fail one rename
# --------------------------------------------------------------------------


def inodes(top: Path) -> dict[tuple[int, int], int]:
    """Size of every data file's inode below top (a hard-linked file once;
    the releases area's own history.json, rewritten by every run, left out)."""
    found: dict[tuple[int, int], int] = {}
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name not in ("history.json", ".lock") and not os.path.islink(path):
                st = os.lstat(path)
                found[(st.st_dev, st.st_ino)] = st.st_size
    return found


def stage_link_copy(efs: EFS, run_id: str, changed: dict[str, bytes]) -> str:
    """A staging directory made as efs_staging and the sync make it: every
    live file hard-linked, the changed ones replaced by new files."""
    rel = ".reefguide-staging/%s/pkg" % run_id
    live, top = efs.root / PKG, efs.root / rel
    for dirpath, _dirnames, filenames in os.walk(live):
        for name in filenames:
            src = Path(dirpath) / name
            dst = top / src.relative_to(live)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    for name, data in changed.items():
        (top / name).unlink(missing_ok=True)
        write_tree(top, {name: data})
    return rel


def test_pruning_releases_that_share_hard_links_counts_only_the_bytes_that_go(efs: EFS) -> None:
    ok(efs.release("r1", {"a": b"a" * 100, "b": b"b" * 200, "c": b"c" * 300}))
    for run_id, changed in (("r2", {"c": b"C" * 310}), ("r3", {"b": b"B" * 220}), ("r4", {"a": b"A" * 130})):
        ok(efs.run({"target": PKG, "staging": stage_link_copy(efs, run_id, changed), "release_id": run_id,
                    "keep": 5}))
    assert os.stat(efs.root / PKG / "c").st_nlink == 3  # r2, r3 and the live r4 share c
    before = inodes(efs.root)
    args = {"target": PKG, "state": "pruned", "keep": 0}
    predicted = ok(efs.run(args, check=True))
    pruned = ok(efs.run(args))
    after = inodes(efs.root)
    really_freed = sum(size for key, size in before.items() if key not in after)
    assert really_freed == 100 + 200 + 300  # r1's a, b, c: every other file is still live
    assert pruned["releases"] == [] and pruned["bytes_freed"] == really_freed
    assert predicted["bytes_freed"] == really_freed and predicted["pruned"] == pruned["pruned"]
    assert sum(p["bytes"] for p in pruned["pruned"]) == really_freed

    # A release with keep 0 retires the live r4 and prunes it at once: only its replaced file goes.
    release = {"target": PKG, "staging": stage_link_copy(efs, "r5", {"c": b"5" * 50}), "release_id": "r5",
               "keep": 0}
    before = inodes(efs.root)
    predicted = ok(efs.run(release, check=True))
    released = ok(efs.run(release))
    really_freed = sum(size for key, size in before.items() if key not in inodes(efs.root))
    assert really_freed == 310  # c as r2, r3 and r4 had it
    assert released["pruned"] == predicted["pruned"] == [{"target": PKG, "release_id": "r4", "bytes": 310}]
    assert released["bytes_freed"] == predicted["bytes_freed"] == really_freed


def test_removing_a_staging_copy_counts_only_the_files_it_alone_holds(efs: EFS) -> None:
    ok(efs.release("r1", {"a": b"a" * 100, "b": b"b" * 200}))
    stage_link_copy(efs, "r2", {"b": b"B" * 250, "new": b"n" * 40})
    before = inodes(efs.root)
    args = {"state": "pruned", "staging": ".reefguide-staging"}
    predicted = ok(efs.run(args, check=True))
    removed = ok(efs.run(args))
    really_freed = sum(size for key, size in before.items() if key not in inodes(efs.root))
    assert really_freed == 250 + 40
    assert removed["staging_removed"] is True and removed["bytes_freed"] == really_freed
    assert predicted["bytes_freed"] == really_freed


def retire_at(efs: EFS, stamps: dict[str, str], target: str = PKG) -> None:
    """Set when the kept releases were retired (history's retired_at)."""
    path = efs.key_dir(target) / "history.json"
    history = json.loads(path.read_text())
    for rel in history["releases"]:
        rel["retired_at"] = stamps.get(rel["release_id"], rel.get("retired_at"))
    path.write_text(json.dumps(history))


def test_a_release_retired_while_a_running_worker_had_started_is_kept_until_it_is_gone(efs: EFS) -> None:
    # workers_since: the oldest worker task still running started at 2026-01-01T12:00:00Z
    since = 1767268800.0
    for n in range(1, 4):
        ok(efs.release("r%d" % n, version(n), keep=5))  # r3 live; r2, r1 kept
    retire_at(efs, {"r2": "2026-01-01T12:30:00Z", "r1": "2026-01-01T11:00:00Z"})
    args = {"target": PKG, "state": "pruned", "keep": 0, "workers_since": since}
    predicted = ok(efs.run(args, check=True))
    assert [p["release_id"] for p in predicted["pruned"]] == ["r1"]
    assert predicted["held"] == [{"target": PKG, "release_id": "r2", "retired_at": "2026-01-01T12:30:00Z"}]
    pruned = ok(efs.run(args))
    assert [p["release_id"] for p in pruned["pruned"]] == ["r1"] and pruned["held"] == predicted["held"]
    assert (efs.key_dir() / "r2").is_dir() and not (efs.key_dir() / "r1").exists()
    # a release now retires r3: with a worker running it is kept too, in check mode as for real
    released = ok(efs.release("r4", version(4), keep=0, workers_since=since))
    assert [h["release_id"] for h in released["held"]] == ["r3", "r2"] and released["pruned"] == []
    # unknown (the controller could not list the workers): everything beyond keep stays
    assert ok(efs.run(dict(args, workers_since=0)))["pruned"] == []
    # the workers that started before are gone: keep alone decides
    gone = ok(efs.run({"target": PKG, "state": "pruned", "keep": 0}))
    assert sorted(p["release_id"] for p in gone["pruned"]) == ["r2", "r3"] and gone["held"] == []
    # a destination no worker reads is pruned to keep whatever the workers
    for n in (1, 2):
        ok(efs.release("o%d" % n, version(n), target="data/other", keep=5))
    other = ok(efs.run({"target": "data/other", "state": "pruned", "keep": 0, "workers_since": 0}))
    assert [p["release_id"] for p in other["pruned"]] == ["o1"] and other["held"] == []
