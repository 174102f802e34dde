"""The record of what is live never lies: after every operation of ours that changes a destination,
a stage of the same data either does nothing because EFS already holds it, or stages and then
EFS holds it (docs/reliability.md, "The record of what is live"). The property test, random
sequences of these operations, is test_live_record_property.py (a lab of its own, so the two run side
by side); a rollback given with a trailing slash dropping the record is checked by
test_stage_reads.py's rollback test."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_tree as make
from helpers import run_playbook
from lab import Lab, running_lab
from live_records import INVENTORY, NOTHING, assert_records_true, live_records, play, stage, tree


@pytest.fixture(scope="module")
def rlab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("record-lab")) as lab:
        yield lab


def test_a_mirror_of_an_ancestor_keeps_what_is_released_below_it(rlab: Lab, tmp_path: Path) -> None:
    """Issue 23: a mirror once deleted the destinations released on their own below it (the data
    packages under data/reefguide), which their records still called live."""
    inner = make(tmp_path / "inner", {"x": "inner\n"})
    stage(rlab, inner, "data/reefguide/m/inner")
    outer = make(tmp_path / "outer", {"y": "outer\n", "old/z": "outer\n"})
    stage(rlab, outer, "data/reefguide/m", "-e", "mode=mirror")
    mirrored = make(tmp_path / "mirrored", {"y": "mirrored\n"})
    out = stage(rlab, mirrored, "data/reefguide/m", "-e", "mode=mirror")
    assert tree(rlab.efs_path / "data/reefguide/m") == dict(tree(mirrored), **{"inner/x": "inner\n"}), out[-3000:]
    assert_records_true(rlab, "after the mirror of data/reefguide/m")
    assert NOTHING in stage(rlab, inner, "data/reefguide/m/inner")  # its record is still true
    # a mirror whose src holds something inside the target released on its own: refused, nothing changed
    clash = make(tmp_path / "clash", {"y": "clash\n", "inner/x": "clash\n"})
    run = run_playbook(rlab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % clash, "-e", "dest=data/reefguide/m",
                       "-e", "mode=mirror")
    assert run.returncode != 0 and "'inner/x', inside inner, which is released on its own" in run.stdout, \
        run.stdout[-3000:]
    assert tree(rlab.efs_path / "data/reefguide/m") == dict(tree(mirrored), **{"inner/x": "inner\n"})


def test_replace_after_merge_converges(rlab: Lab, tmp_path: Path) -> None:
    a = make(tmp_path / "a", {"a1": "a\n", "a2": "a\n"})
    b = make(tmp_path / "b", {"b1": "b\n"})
    stage(rlab, a, "data/reefguide/mix")
    merged = stage(rlab, b, "data/reefguide/mix", "-e", "mode=merge")
    assert "0 removed" in merged, merged[-3000:]  # a merge removes nothing, and its plan says so
    assert tree(rlab.efs_path / "data/reefguide/mix") == dict(tree(a), **tree(b))
    out = stage(rlab, b, "data/reefguide/mix", "-e", "mode=replace")
    assert NOTHING not in out, out[-3000:]
    assert tree(rlab.efs_path / "data/reefguide/mix") == tree(b)
    # and now the record is the truth: the same again does nothing
    assert NOTHING in stage(rlab, b, "data/reefguide/mix", "-e", "mode=replace")


def test_a_teardown_drops_the_records_of_what_it_removes_and_of_a_hand_edit_on_efs(rlab: Lab, tmp_path: Path) -> None:
    """Also: two destinations that used to share a record's key (a/b and a__b, before 0.2) are
    staged apart: the same tree staged at a__b after a/b is staged, not "Nothing to do"."""
    gone = make(tmp_path / "gone", {"f": "removed then staged again\n"})
    stage(rlab, gone, "data/reefguide/keys/a/b")
    data = make(tmp_path / "hand", {"keep.txt": "staged by us\n", "sub/edit.txt": "original\n"})
    stage(rlab, data, "data/reefguide/hand")
    out = stage(rlab, gone, "data/reefguide/keys/a__b")
    assert NOTHING not in out, out[-3000:]
    assert tree(rlab.efs_path / "data/reefguide/keys/a__b") == tree(gone)
    # someone edits a file on EFS by hand (an SSM shell): the record still names the old bytes
    (rlab.efs_path / "data/reefguide/hand/sub/edit.txt").write_text("edited by hand\n")
    # a teardown removes one destination, and (it has the instance anyway) fingerprints EFS and
    # drops the record the hand edit made false
    out = play(rlab, "teardown.yml", "-e", '{"remove": ["data/reefguide/keys/a/b"]}')
    assert not (rlab.efs_path / "data/reefguide/keys/a/b").exists()
    records = live_records(rlab)
    assert "data/reefguide/keys/a/b" not in records and "data/reefguide/hand" not in records, out[-3000:]
    assert "Records dropped, EFS changed there since their release (by hand?): data/reefguide/hand" in out
    assert "data/reefguide/keys/a__b" in records  # the one EFS still agrees with is kept
    # so the same data stages again (before: "Nothing to do", the removal or the hand edit left live) ...
    again = stage(rlab, gone, "data/reefguide/keys/a/b")
    assert NOTHING not in again and tree(rlab.efs_path / "data/reefguide/keys/a/b") == tree(gone), again[-3000:]
    again = stage(rlab, data, "data/reefguide/hand")
    assert NOTHING not in again and tree(rlab.efs_path / "data/reefguide/hand") == tree(data), again[-3000:]
    # ... and the untouched destination still needs nothing
    assert NOTHING in stage(rlab, gone, "data/reefguide/keys/a__b")
