"""fs.py and users.py on temporary directories: sizes, what deletion frees with hard links,
deletion that never leaves its root, the owner/group lookup. No ansible run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible.module_utils.reefguide.fs import (
    FreedBytes,
    entry_state,
    make_dirs,
    remove_empty_parents,
    remove_tree,
    tree_size,
)
from ansible.module_utils.reefguide.paths import UnsafePathError
from ansible.module_utils.reefguide.users import UnknownUserError, group_name, resolve_ids, user_name


def tree(top: Path, files: dict[str, int]) -> None:
    for rel, size in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(b"x" * size)


@pytest.fixture
def two_versions(tmp_path: Path) -> Path:
    """old/ and new/ share 'same' (100 bytes) by a hard link; old/gone (10) and new/fresh (20) are their own."""
    tree(tmp_path / "old", {"same": 100, "d/gone": 10})
    tree(tmp_path / "new", {"d/fresh": 20})
    os.link(tmp_path / "old/same", tmp_path / "new/same")
    return tmp_path


def test_tree_size_counts_every_link_and_skips_entries(two_versions: Path) -> None:
    assert tree_size(str(two_versions / "old")) == (2, 110)
    assert tree_size(str(two_versions / "old"), ["d"]) == (1, 100)
    assert tree_size(str(two_versions / "old"), ["same"]) == (1, 10)


def test_a_file_shared_with_what_stays_frees_nothing(two_versions: Path) -> None:
    assert FreedBytes().tree(str(two_versions / "old")) == (2, 10)


def test_one_tally_counts_a_file_shared_by_two_deletions_once(two_versions: Path) -> None:
    planned = FreedBytes()
    assert [planned.tree(str(two_versions / v)) for v in ("old", "new")] == [(2, 10), (2, 120)]
    done = FreedBytes()
    root = str(two_versions)
    assert [remove_tree(root, str(two_versions / v), freed=done) for v in ("old", "new")] == [(2, 10), (2, 120)]
    assert os.listdir(two_versions) == []


def test_remove_tree_of_one_file_and_of_a_directory_s_contents(two_versions: Path) -> None:
    root = str(two_versions)
    assert remove_tree(root, str(two_versions / "new/same")) == (1, 0)  # old/same still links it
    assert remove_tree(root, str(two_versions / "old"), dry_run=True, contents_only=True) == (2, 110)
    assert sorted(os.listdir(two_versions / "old")) == ["d", "same"]
    assert remove_tree(root, str(two_versions / "old"), contents_only=True) == (2, 110)
    assert os.listdir(two_versions / "old") == []
    assert remove_tree(root, str(two_versions / "missing")) == (0, 0)


def test_remove_tree_never_leaves_its_root_nor_follows_a_link(tmp_path: Path) -> None:
    tree(tmp_path / "outside", {"keep": 5})
    root = tmp_path / "efs"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafePathError, match="not below"):
        remove_tree(str(root), str(root / "link/keep"))
    with pytest.raises(UnsafePathError, match="not below"):
        remove_tree(str(root), str(root))
    assert remove_tree(str(root), str(root / "link")) == (1, 0)
    assert (tmp_path / "outside/keep").exists() and not os.path.lexists(root / "link")


def test_make_dirs_refuses_to_create_outside_its_base(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base/out").symlink_to(tmp_path)
    make_dirs(str(tmp_path / "base"), str(tmp_path / "base/a/b"))
    assert (tmp_path / "base/a/b").is_dir()
    with pytest.raises(UnsafePathError, match="outside"):
        make_dirs(str(tmp_path / "base"), str(tmp_path / "base/out/x"))
    assert not (tmp_path / "x").exists()


def test_entry_state_and_remove_empty_parents(tmp_path: Path) -> None:
    (tmp_path / "a/b/c").mkdir(parents=True)
    assert entry_state(str(tmp_path / "a/b/c")) == "empty_dir"
    assert entry_state(str(tmp_path / "a")) == "present" and entry_state(str(tmp_path / "z")) == "absent"
    (tmp_path / "a/b/c").rmdir()
    assert remove_empty_parents(str(tmp_path), str(tmp_path / "a/b/c")) == [str(tmp_path / "a/b"),
                                                                          str(tmp_path / "a")]
    assert tmp_path.is_dir()


def test_owner_and_group_by_name_or_number() -> None:
    assert resolve_ids(None, None) == (None, None)
    assert resolve_ids("root", "0") == (0, 0)
    assert resolve_ids("1234", None) == (1234, None)
    assert user_name(0) == "root" and group_name(0) == "root"
    assert user_name(987654) == "987654"


def test_an_unknown_owner_or_group_says_what_to_do() -> None:
    with pytest.raises(UnknownUserError) as exc:
        resolve_ids("no-such-user-here", None)
    assert str(exc.value) == ("owner 'no-such-user-here' is not a user on this host: create the user first or give "
                              "a numeric uid")
    with pytest.raises(UnknownUserError, match="group 'no-such-group' is not a group on this host: .* numeric gid"):
        resolve_ids(None, "no-such-group")
