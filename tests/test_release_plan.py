"""release_plan.py: the release engine's decisions, on plain data (no file system, no ansible run)."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from ansible.module_utils.reefguide.release_plan import (
    REFUSED_NESTED,
    REFUSED_PRESERVED,
    carry_action,
    carry_entries,
    first_overlap,
    free_id,
    in_place_leaving,
    in_place_plan,
    is_live_from,
    keep_after_release,
    keep_after_rollback,
    prune_plan,
    recovery_step,
    rollback_choice,
    rollback_is_done,
)
from ansible.module_utils.reefguide.releases_store import ReleaseError

KEPT = [{"release_id": rid, "path": "/r/" + rid} for rid in ("r3", "r2", "r1")]


@pytest.mark.parametrize("keep, doomed", [(0, ["r3", "r2", "r1"]), (1, ["r2", "r1"]), (3, []), (9, [])])
def test_prune_plan_drops_the_oldest_beyond_keep(keep: int, doomed: list[str]) -> None:
    assert [r["release_id"] for r in prune_plan(KEPT, keep)] == doomed


def test_prune_plan_refuses_a_negative_keep() -> None:
    with pytest.raises(ReleaseError, match="keep must be 0 or more"):
        prune_plan(KEPT, -1)


def test_keep_after_release_puts_the_retiring_version_first() -> None:
    assert keep_after_release(["r2", "r1"], "r3", 2) == (["r3", "r2"], ["r1"])
    assert keep_after_release(["r2", "r1"], None, 1) == (["r2"], ["r1"])
    assert keep_after_release([], "r1", 0) == ([], ["r1"])


def test_keep_after_rollback_swaps_places_and_prunes_nothing() -> None:
    assert keep_after_rollback(["r2", "r1"], "r3", "r2") == ["r3", "r1"]
    assert keep_after_rollback(["r2", "r1"], None, "r1") == ["r2"]


def test_rollback_choice_and_when_a_rollback_has_nothing_to_do() -> None:
    assert rollback_choice(KEPT, None)["release_id"] == "r3"
    assert rollback_choice(KEPT, "r1")["release_id"] == "r1"
    assert rollback_choice(KEPT, "r9") is None and rollback_choice([], None) is None
    from_rollback = {"release_id": "r2", "source": "rollback"}
    assert rollback_is_done(from_rollback, None) and rollback_is_done(from_rollback, "r2")
    assert not rollback_is_done(from_rollback, "r1")
    assert not rollback_is_done({"release_id": "r2", "source": "staging"}, None)
    assert not rollback_is_done(None, None)


def test_is_live_from_matches_by_id_or_by_staging_directory() -> None:
    live = {"release_id": "r2", "source": "staging", "staging": ".reefguide-staging/k/pkg"}
    assert is_live_from(live, "r2", None) and not is_live_from(live, "r3", ".reefguide-staging/k/pkg")
    assert is_live_from(live, None, ".reefguide-staging/k/pkg") and not is_live_from(live, None, "other")
    assert not is_live_from(dict(live, source="rollback"), None, ".reefguide-staging/k/pkg")
    assert not is_live_from(None, "r2", None)


def test_free_id_appends_the_first_free_number() -> None:
    taken = {"20250101T000000Z", "20250101T000000Z-2"}
    assert free_id("20250101T000000Z", taken.__contains__) == "20250101T000000Z-3"
    assert free_id("new", taken.__contains__) == "new"


def test_carry_entries_preserve_then_nested_then_the_cache_once() -> None:
    assert carry_entries(["cache"], ["adria/pkg"], "cache") == ["cache", "adria/pkg"]
    assert carry_entries(["adria"], ["adria/pkg", "other/pkg"], "cache") == ["adria", "other/pkg", "cache"]
    assert carry_entries([], [], None) == []


def action(entry: str, src: str, dst: str, mode: str = "move", preserve: Optional[list[str]] = None,
           nested: Optional[list[str]] = None, cache: Optional[str] = "cache") -> str:
    return carry_action(entry, ["cache"] if preserve is None else preserve, nested or [], cache, mode, src, dst)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"entry": "cache", "src": "dir", "dst": "absent"}, "moved"),
        ({"entry": "cache", "src": "dir", "dst": "empty_dir"}, "moved"),
        ({"entry": "cache", "src": "dir", "dst": "present"}, REFUSED_PRESERVED),
        ({"entry": "cache", "src": "dir", "dst": "absent", "mode": "fresh"}, "created_empty"),
        ({"entry": "cache", "src": "dir", "dst": "present", "mode": "fresh"}, "kept_incoming"),
        ({"entry": "cache", "src": "absent", "dst": "absent"}, "created_empty"),  # the cache must exist
        ({"entry": "cache", "src": "absent", "dst": "absent", "preserve": []}, "created_empty"),
        ({"entry": "pkg", "src": "dir", "dst": "absent", "nested": ["pkg"]}, "moved"),
        ({"entry": "pkg", "src": "dir", "dst": "present", "nested": ["pkg"]}, REFUSED_NESTED),
        ({"entry": "pkg", "src": "dir", "dst": "absent", "nested": ["pkg"], "mode": "fresh"}, "moved"),
        ({"entry": "pkg", "src": "absent", "dst": "absent", "nested": ["pkg"]}, "absent"),
        ({"entry": "notes", "src": "other", "dst": "absent", "preserve": ["notes"], "mode": "fresh"}, "absent"),
        ({"entry": "logs", "src": "dir", "dst": "absent", "preserve": ["logs"], "mode": "fresh"}, "created_empty"),
    ],
)
def test_carry_action(kwargs: dict[str, Any], expected: str) -> None:
    assert action(**kwargs) == expected


@pytest.mark.parametrize(
    "inodes, expected",
    [
        # (target, incoming, retired) now; the incoming version is 2, the outgoing 1
        ((2, 1, None), "retire_then_finish"),  # exchanged, not yet moved into the releases area
        ((2, None, 1), "finish"),  # both renames done, history not yet written
        ((None, 2, 1), "move_in_then_finish"),  # crashed between the two renames
        ((1, 2, None), "undo"),  # nothing swapped
        ((3, 2, None), "stuck"),  # the target was replaced by something else
    ],
)
def test_recovery_step_with_an_outgoing_version(inodes: tuple, expected: str) -> None:
    assert recovery_step(*inodes, new=2, old=1) == expected


def test_recovery_step_for_a_first_release() -> None:
    assert recovery_step(None, 2, None, new=2, old=None) == "move_in_then_finish"
    assert recovery_step(2, None, None, new=2, old=None) == "finish"
    assert recovery_step(None, None, None, new=2, old=None) == "undo"


def test_first_overlap_names_the_two_paths() -> None:
    assert first_overlap([("target", "data/reefguide"), ("releases_dir", ".reefguide-releases")]) is None
    assert first_overlap([("target", "data"), ("releases_dir", ".r"), ("staging", "data/x")]) == (
        "target", "data", "staging", "data/x")
    assert first_overlap([("a", "data/reef"), ("b", "data/reefguide")]) is None


# -- the in-place swap of the workers' root ------------------------------------------------

def listing(entries: dict[str, Any]) -> dict[str, tuple]:
    """{path: inode} for files, {path: 'dir'} (or ('dir', mode)) for directories; '' is added."""
    out: dict[str, tuple] = {"": ("dir", 1, 0o755, 0, 0)}
    for path, what in entries.items():
        if what == "dir":
            out[path] = ("dir", 0, 0o755, 0, 0)
        elif isinstance(what, tuple):
            out[path] = ("dir", 0, what[1], 0, 0)
        else:
            out[path] = ("file", what, 0o644, 0, 0)
    return out


def test_in_place_keeps_directories_and_replaces_only_changed_files() -> None:
    live = listing({"config.toml": 10, "layers": "dir", "layers/depth.tif": 11, "layers/old.tif": 12})
    new = listing({"config.toml": 20, "layers": "dir", "layers/depth.tif": 11, "layers/slope.tif": 21})
    ops = in_place_plan(live, new, [])
    assert ops == [("link_in", "config.toml"), ("move_out", "layers/old.tif"), ("link_in", "layers/slope.tif")]
    assert in_place_leaving(ops) == ["layers/old.tif"]


def test_in_place_never_touches_what_stays_nor_its_parents() -> None:
    # data/reefguide: the cache and a separately released data package stay; the staged
    # version has no adria/ at all, yet adria/ and adria/datapackages/ are kept.
    live = listing({"cache": "dir", "cache/x": 1, "adria": "dir", "adria/datapackages": "dir",
                    "adria/datapackages/Moore": "dir", "adria/datapackages/Moore/a": 2,
                    "adria/datapackages/stray.txt": 3, "config.toml": 4})
    new = listing({"config.toml": 4})
    ops = in_place_plan(live, new, ["cache", "adria/datapackages/Moore"])
    assert ops == [("move_out", "adria/datapackages/stray.txt")]


def test_in_place_new_directories_arrive_whole_after_what_leaves() -> None:
    live = listing({"a": 1, "old": "dir", "old/f": 2})
    new = listing({"a": "dir", "a/f": 3, "new": "dir", "new/deep": "dir", "new/deep/g": 4})
    ops = in_place_plan(live, new, [])
    # a changes from a file to a directory: the file leaves, then the directory comes in whole
    assert ops == [("move_out", "a"), ("move_out", "old"), ("dir_in", "a"), ("dir_in", "new")]


def test_in_place_directory_mode_changes_are_applied_to_the_kept_directory() -> None:
    live = listing({"layers": "dir"})
    new = listing({"layers": ("dir", 0o750)})
    assert in_place_plan(live, new, []) == [("meta", "layers")]


def test_in_place_refuses_a_file_where_a_kept_parent_must_be() -> None:
    live = listing({"adria": "dir", "adria/Moore": "dir"})
    new = listing({"adria": 5})
    with pytest.raises(ReleaseError, match="must stay a directory"):
        in_place_plan(live, new, ["adria/Moore"])


def test_in_place_of_identical_versions_does_nothing() -> None:
    tree = listing({"config.toml": 1, "layers": "dir", "layers/a": 2})
    assert in_place_plan(tree, dict(tree), []) == []
