"""efs_compare: a check run's plan from what EFS holds, as the stage would see it (the workers'
cache and the targets released on their own below the destination left out)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ansible.module_utils.reefguide.layout import target_key

from helpers import make_tree, run_module

INSTANCE_PYTHON = "/usr/bin/python3"  # the instance's python runs it


def manifest(files: dict[str, str]) -> dict[str, list]:
    return {rel: [len(text.encode()), hashlib.sha256(text.encode()).hexdigest()] for rel, text in files.items()}


def test_counts_what_a_stage_would_change_and_leaves_out_what_it_keeps(tmp_path: Path) -> None:
    root = tmp_path / "efs"
    make_tree(root / "data/reefguide", {
        "same.csv": "1\n", "edited.csv": "old\n", "resized.csv": "longer\n", "gone.csv": "x\n",
        "cache/w.bin": "worker\n", "pkg/inner.csv": "released on its own\n"})
    history = root / ".reefguide-releases" / target_key("data/reefguide/pkg") / "history.json"
    history.parent.mkdir(parents=True)
    history.write_text(json.dumps({"target": "data/reefguide/pkg", "releases": []}))
    local = manifest({"same.csv": "1\n", "edited.csv": "new\n", "resized.csv": "short\n", "added.csv": "y\n"})
    before = sorted(p.read_bytes() for p in root.rglob("*") if p.is_file())

    res = run_module("efs_compare", {"root": str(root), "dest": "data/reefguide", "files": local},
                     check=True, python=INSTANCE_PYTHON)
    assert not res.get("failed") and res["changed"] is False, res
    assert res["counts"] == {"new": 1, "changed": 2, "removed": 1, "unchanged": 1}, res
    assert (res["new"], res["changed_files"], res["removed"]) == (["added.csv"], ["edited.csv", "resized.csv"],
                                                                  ["gone.csv"])
    merge = run_module("efs_compare", {"root": str(root), "dest": "data/reefguide", "files": local, "mode": "merge"},
                       check=True, python=INSTANCE_PYTHON)
    assert merge["counts"]["removed"] == 0 and merge["removed"] == []
    absent = run_module("efs_compare", {"root": str(root), "dest": "data/reefguide/none", "files": local},
                        check=True, python=INSTANCE_PYTHON)
    assert absent["exists"] is False and absent["counts"] == {"new": 4, "changed": 0, "removed": 0, "unchanged": 0}
    assert sorted(p.read_bytes() for p in root.rglob("*") if p.is_file()) == before  # read-only
    bad = run_module("efs_compare", {"root": str(root), "dest": "../etc", "files": local}, python=INSTANCE_PYTHON)
    assert bad.get("failed") and ".." in bad["msg"], bad
