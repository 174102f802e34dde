"""The sync engine's planners (module_utils/reefguide/sync_plan.py): what a
push or a pull will transfer, delete and skip, decided from the two listings
alone. Fast: no S3, no servers; the SHA-256s come from tables here."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import pytest
from ansible.module_utils.reefguide.checksums import CacheEntry
from ansible.module_utils.reefguide.local_tree import DestTree, LocalFile, Matcher, SourceTree, scan_source
from ansible.module_utils.reefguide.manifest import RemoteObject, RemoteState, state_from_listing
from ansible.module_utils.reefguide.sync_common import IN_MEMORY_MAX, SyncError
from ansible.module_utils.reefguide.sync_plan import (
    Differ,
    Plan,
    known_verdict,
    plan_pull,
    plan_push,
    spread_over_dirs,
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lf(rel: str, size: int, kind: str = "file") -> LocalFile:
    return LocalFile(rel, "/src/" + rel, size, 1, 1, 1, kind)


def obj(rel: str, size: int, content: Optional[str] = None, etag: str = "") -> RemoteObject:
    return RemoteObject(rel, "p/" + rel, size, etag or "etag-" + rel, "", sha(content) if content else None)


def remote(*objs: RemoteObject, markers: tuple[str, ...] = (), dirs: tuple[str, ...] = ()) -> RemoteState:
    return RemoteState(files={o.rel: o for o in objs}, markers=set(markers), manifest_dirs=list(dirs))


def differ(contents: dict[str, str], cache: Optional[dict[str, CacheEntry]] = None) -> Differ:
    """Compares as the sync does (known_verdict first), reading a local file's
    'content' from contents only when the SHA-256s must decide."""

    def compare(pairs: list[tuple[LocalFile, RemoteObject]]) -> list[bool]:
        out = []
        for local, o in pairs:
            verdict = known_verdict(local, o, lambda f: (cache or {}).get(f.rel))
            out.append(verdict if verdict is not None else sha(contents[local.rel]) != o.sha256)
        return out

    return compare


# --------------------------------------------------------------------------
# push


def test_push_uploads_new_and_changed_files_and_skips_unchanged_ones() -> None:
    src = SourceTree({f.rel: f for f in [lf("new", 5), lf("same", 3), lf("bigger", 4), lf("edited", 3)]}, [], [])
    rem = remote(obj("same", 3, "abc"), obj("bigger", 3, "abc"), obj("edited", 3, "abc"))
    # 'bigger' is decided by size: its content is not in the table, so reading it would fail
    plan, uploads = plan_push(src, rem, differ({"same": "abc", "edited": "xyz"}))
    assert [f.rel for f in uploads] == ["new", "bigger", "edited"]  # biggest first
    assert plan.transfer == [("new", 5), ("bigger", 4), ("edited", 3)]
    assert (plan.skip_files, plan.skip_bytes) == (1, 3)
    assert plan.delete == []


def test_push_trusts_the_cache_when_it_synced_this_file_with_this_very_object() -> None:
    src = SourceTree({"a": lf("a", 3), "b": lf("b", 3)}, [], [])
    rem = remote(obj("a", 3, etag="e1"), obj("b", 3, "new", etag="e2"))
    cache = {"a": CacheEntry(3, 1, 1, 1, sha("old"), "e1"), "b": CacheEntry(3, 1, 1, 1, sha("old"), "e-older")}
    plan, uploads = plan_push(src, rem, differ({"b": "old"}, cache))
    assert [f.rel for f in uploads] == ["b"]  # b's cache entry is for another object: SHA-256s decide
    assert rem.files["a"].sha256 == sha("old")  # taken from the cache, for the manifest


def test_push_deletes_what_the_source_lacks_only_in_mirror_mode() -> None:
    src = SourceTree({"keep/a": lf("keep/a", 1)}, ["empty"], [])
    rem = remote(obj("keep/a", 1, "a"), obj("old.csv", 10), obj("gone/b", 2),
                 markers=("keep", "empty", "stale"))  # fmt: skip
    merge, _ = plan_push(src, rem, differ({"keep/a": "a"}))
    assert merge.delete == [] and merge.delete_bytes == 0
    mirror, uploads = plan_push(src, rem, differ({"keep/a": "a"}), mirror=True)
    assert uploads == []
    assert mirror.delete == ["gone/b", "old.csv", "stale/"]  # a marker the source has no directory for
    assert mirror.delete_bytes == 12


def test_push_leaves_excluded_names_alone_on_both_sides(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("d")
    (tmp_path / "debug.log").write_text("l")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tile.bin").write_text("t")
    excluded = Matcher(["*.log", "cache"])
    src = scan_source(str(tmp_path), excluded)
    rem = state_from_listing([("p/old.log", 1, "e", ""), ("p/cache/x", 1, "e", ""), ("p/other", 1, "e", "")],
                             "p/", excluded)  # fmt: skip
    plan, uploads = plan_push(src, rem, differ({}), mirror=True)
    assert [f.rel for f in uploads] == ["data.csv"]
    assert plan.delete == ["other"]


def test_max_delete_refuses_a_mirror_that_deletes_too_much_and_the_plan_says_what_it_found() -> None:
    src = SourceTree({"a": lf("a", 1)}, [], [])
    rem = remote(obj("a", 1, "a"), obj("x", 1), obj("y", 1), obj("z", 1))
    plan = Plan()
    with pytest.raises(SyncError, match=r"would delete 3 entries, more than max_delete=2 \(first: x, y, z\)"):
        plan_push(src, rem, differ({"a": "a"}), mirror=True, max_delete=2, plan=plan)
    assert plan.delete == ["x", "y", "z"] and plan.skip_files == 1
    assert plan_push(src, rem, differ({"a": "a"}), mirror=True, max_delete=3)[0].delete == ["x", "y", "z"]
    assert plan_push(src, rem, differ({"a": "a"}), max_delete=0)[0].delete == []  # merge deletes nothing


# --------------------------------------------------------------------------
# pull


def dest(
    *files: LocalFile, dirs: tuple[str, ...] = (), keep: tuple[str, ...] = (), tmp: tuple[str, ...] = ()
) -> DestTree:
    return DestTree({f.rel: f for f in files}, set(dirs), set(keep), list(tmp))


def test_pull_downloads_new_and_changed_objects_and_skips_unchanged_files() -> None:
    here = dest(lf("same", 3), lf("smaller", 2), lf("edited", 3), lf("link", 3, kind="link"))
    rem = remote(obj("same", 3, "abc"), obj("smaller", 3, "abc"), obj("edited", 3, "abc"), obj("link", 3, "abc"),
                 obj("new", 7, "n"))  # fmt: skip
    plan, downloads = plan_pull(here, rem, differ({"same": "abc", "edited": "xyz"}))
    assert sorted(o.rel for o in downloads) == ["edited", "link", "new", "smaller"]
    assert sorted(plan.transfer) == [("edited", 3), ("link", 3), ("new", 7), ("smaller", 3)]
    assert (plan.skip_files, plan.skip_bytes) == (1, 3)
    assert plan.delete == [] and plan.dirs_create == [] and plan.dirs_remove == []


@pytest.mark.parametrize("mirror", [False, True])
def test_pull_keeps_a_local_file_the_bucket_lacks_in_merge_and_deletes_it_in_mirror(mirror: bool) -> None:
    here = dest(lf("a", 1), lf("local-only.txt", 9), lf("old/x", 2), dirs=("old", "kept", "d"), keep=("kept",))
    rem = remote(obj("a", 1, "a"), obj("d/b", 4), dirs=("empty",))
    plan, downloads = plan_pull(here, rem, differ({"a": "a"}), mirror=mirror)
    assert [o.rel for o in downloads] == ["d/b"]
    assert plan.dirs_create == ["empty"]
    if mirror:
        assert plan.delete == ["local-only.txt", "old/x"] and plan.delete_bytes == 11
        assert plan.dirs_remove == ["old"]  # 'kept' holds excluded entries, 'd' is needed
    else:
        assert plan.delete == [] and plan.dirs_remove == []


def test_pull_refuses_in_merge_a_local_entry_where_the_bucket_has_a_directory() -> None:
    here = dest(lf("d", 1, kind="link"))
    rem = remote(obj("d/f", 1))
    with pytest.raises(SyncError, match=r"d exists in /dest as a symlink where the bucket has a directory") as err:
        plan_pull(here, rem, differ({}), where=("s3://b/p", "/dest"))
    # issue 23: it once advised mode: mirror, which deletes more than the user asked
    assert "mirror" not in str(err.value) and "a merge deletes nothing" in str(err.value)
    plan, _ = plan_pull(here, rem, differ({}), mirror=True)
    assert plan.delete == ["d"] and plan.dirs_create == ["d"]


def test_pull_refuses_keys_it_cannot_store_and_a_name_that_is_file_and_directory() -> None:
    bad = remote(obj("a", 1))
    bad.bad.append("'p/../x': contains '..'")
    with pytest.raises(SyncError, match=r"refusing to pull s3://b/p: 1 key\(s\) cannot be stored safely below /dest"):
        plan_pull(dest(), bad, differ({}), mirror=True, where=("s3://b/p", "/dest"))
    with pytest.raises(SyncError, match=r"both a file and a directory \(e.g. 'a/b'\)"):
        plan_pull(dest(), remote(obj("a", 1), obj("a/b", 1)), differ({}), mirror=True)


def test_pull_into_a_missing_root_creates_it_first_and_skips_excluded_directories() -> None:
    rem = remote(obj("x/y/f", 1), obj("cache/t", 1), markers=("m",))
    plan, _ = plan_pull(dest(), rem, differ({}), root_exists=False, excluded=Matcher(["cache"]))
    assert plan.dirs_create == [".", "m", "x", "x/y"]


def test_pull_max_delete_and_temporaries() -> None:
    here = dest(lf("x", 1), lf("y", 1), tmp=(".f.reefguide-tmp-0123456789ab",))
    plan = Plan()
    with pytest.raises(SyncError, match="would delete 2 entries, more than max_delete=1"):
        plan_pull(here, remote(), differ({}), mirror=True, max_delete=1, plan=plan)
    assert plan.temporaries == [".f.reefguide-tmp-0123456789ab"] and plan.delete == ["x", "y"]


def test_downloads_start_with_the_big_files_then_take_small_ones_from_each_directory_in_turn() -> None:
    objs = [obj("a/1", 1), obj("a/2", 1), obj("a/3", 1), obj("b/1", 1), obj("big", IN_MEMORY_MAX + 1),
            obj("bigger", IN_MEMORY_MAX + 2)]  # fmt: skip
    assert [o.rel for o in spread_over_dirs(objs)] == ["bigger", "big", "a/1", "b/1", "a/2", "a/3"]


def test_kept_paths_match_as_spelled_with_everything_below_them() -> None:
    """SyncOptions.keep (targets released on their own): a name with glob characters is no pattern."""
    kept = Matcher(["cache"], literal=["adria/p[1]*", "x/"])
    assert kept("adria/p[1]*") and kept("adria/p[1]*/f.tif") and kept("x/y") and kept("cache/t")
    assert not kept("adria/p1") and not kept("adria/p[1]*x") and not kept("adria/p[1]")
