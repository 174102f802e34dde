"""layout.py: the EFS layout facts, the target key and the mounted-root guard (no lab, no ansible run)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from ansible.module_utils.reefguide.layout import (
    CACHE,
    MAX_KEY_BYTES,
    cache_inside,
    default_preserve,
    efs_root_problem,
    key_to_target,
    target_key,
)
from ansible.module_utils.reefguide.paths import UnsafePathError

from helpers import ROOT

ODD_TARGETS = [
    "data/reefguide",
    "a/b",
    "a__b",
    "a%2Fb",
    "a%252Fb",
    "a%/b%",
    "%25/%2F",
    "data/reefguide/adria/datapackages/Moore 2025 'rc1'",
    "ünïcode/пакет/データ",
]


@pytest.mark.parametrize("target", ODD_TARGETS)
def test_target_key_round_trips_and_is_one_path_component(target: str) -> None:
    key = target_key(target)
    assert "/" not in key and key not in (".", "..")
    assert key_to_target(key) == target


def test_target_keys_never_collide() -> None:
    parts = ["a", "b", "%", "%2F", "%25", "__", "2F"]
    targets = {"/".join(p) for n in (1, 2, 3) for p in itertools.product(parts, repeat=n)}
    targets = {t for t in targets if all(c not in ("", ".", "..") for c in t.split("/"))}
    keys = {target_key(t) for t in targets}
    assert len(keys) == len(targets)
    assert len({target_key("a/b"), target_key("a__b"), target_key("a%2Fb")}) == 3


def test_long_target_keys_are_cut_hashed_and_still_distinct() -> None:
    base = "data/reefguide/" + "x" * 240
    one, two = target_key(base + "/one"), target_key(base + "/two")
    assert one != two
    for key in (one, two):
        assert len(os.fsencode(key)) <= MAX_KEY_BYTES and "~" in key and "/" not in key


def test_target_key_refuses_what_would_escape() -> None:
    for bad in ("../x", "/abs", ""):
        with pytest.raises(UnsafePathError):
            target_key(bad)


@pytest.mark.parametrize(
    "target, inside",
    [
        ("data", "reefguide/cache"),  # above the cache
        ("data/reefguide", "cache"),
        ("data/reefguide/cache", None),  # the cache itself
        ("data/reefguide/cache/tiles", None),  # below it
        ("data/reefguide/adria", None),  # beside it
        ("data/reef", None),  # a prefix of the name, not a parent
        ("data/reefguide2", None),
    ],
)
def test_cache_inside_a_target(target: str, inside: str) -> None:
    assert cache_inside(target) == inside
    assert default_preserve(target) == ([inside] if inside else [])


def test_every_module_takes_the_cache_from_layout() -> None:
    assert CACHE == "data/reefguide/cache"
    for path in (ROOT / "library").glob("*.py"):
        assert 'CACHE = "' not in path.read_text(), path


def test_efs_root_problem_says_to_mount_when_root_is_not_a_directory(tmp_path: Path) -> None:
    assert efs_root_problem(str(tmp_path)) is None
    missing = efs_root_problem(str(tmp_path / "efs"))
    assert missing == "EFS root %s is not a directory: is EFS mounted (efs_mount)?" % (tmp_path / "efs")
    (tmp_path / "file").write_text("x")
    assert efs_root_problem(str(tmp_path / "file")) is not None
