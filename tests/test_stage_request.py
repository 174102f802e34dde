"""stage_request refuses bad requests before anything starts, and resolves presets."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from helpers import run_module


def req(tmp_path, **args):
    args.setdefault("run_id", "run1")
    args.setdefault("unpack_dir", str(tmp_path / "unpacked"))
    return run_module("stage_request", args)


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "config.toml").write_text("x = 1\n")
    return d


def test_presets_resolve_with_their_default_modes(tmp_path, src) -> None:
    r = req(tmp_path, src=str(src), preset="reefguide_data")
    assert (r["dest"], r["mode"], r["src_kind"]) == ("data/reefguide", "merge", "directory")
    # one per destination, not per run: a re-run after a failure resumes in them
    assert r["run_prefix"] == "reefguide-efs/runs/data%2Freefguide/"
    assert r["staging"] == ".reefguide-staging/data%2Freefguide/data/reefguide"
    assert r["live_manifest_key"] == "reefguide-efs/live/data%2Freefguide.json"
    assert (r["cache_in_dest"], r["cache"]) == ("cache", "data/reefguide/cache")
    r = req(tmp_path, src=str(src), preset="adria_datapackage", package="Moore_2025-01-17_v070_rc1")
    assert (r["dest"], r["mode"]) == ("data/reefguide/adria/datapackages/Moore_2025-01-17_v070_rc1", "replace")
    r = req(tmp_path, src=str(src), dest="data/reefguide/criteria/", mode="mirror")
    assert (r["dest"], r["mode"]) == ("data/reefguide/criteria", "mirror")


@pytest.mark.parametrize("args, words", [
    ({"dest": "/data/reefguide"}, "absolute"),
    ({"dest": "data/reefguide/../../etc"}, ".."),
    ({"dest": "data/other"}, "outside the allowed roots"),
    ({"dest": "data/reefguide/cache"}, "clear_cache"),
    ({"preset": "adria_datapackage"}, "package="),
    ({"preset": "adria_datapackage", "package": "../x"}, "plain name"),
    ({}, "dest="),
    ({"dest": "data/reefguide", "preset": "reefguide_data"}, "not both"),
])
def test_bad_destinations_are_refused_before_anything_starts(tmp_path, src, args, words) -> None:
    r = req(tmp_path, src=str(src), **args)
    assert r.get("failed") and "nothing started" in r["msg"] and words in r["msg"], r["msg"]


def test_unknown_preset_and_missing_src(tmp_path, src) -> None:
    r = req(tmp_path, src=str(src), preset="everything")
    assert r.get("failed") and "reefguide_data" in r["msg"]
    r = req(tmp_path, src=str(tmp_path / "nope"), preset="reefguide_data")
    assert r.get("failed") and "does not exist" in r["msg"]


def test_archives_are_unpacked_and_bad_members_refused(tmp_path) -> None:
    tgz = tmp_path / "pkg.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        data = b"raster"
        info = tarfile.TarInfo("pkg/a b'c.tif")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    r = req(tmp_path, src=str(tgz), preset="reefguide_data")
    assert r["src_kind"] == "archive"
    assert (tmp_path / "unpacked" / "pkg" / "a b'c.tif").read_bytes() == b"raster"

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    r = req(tmp_path, src=str(evil), preset="reefguide_data", unpack_dir=str(tmp_path / "u2"))
    assert r.get("failed") and ".." in r["msg"]
    assert not (tmp_path / "escape.txt").exists()


def test_destinations_that_differ_never_share_keys(tmp_path, src) -> None:
    """Before 0.2, '/' became '__': data/reefguide/a/b and data/reefguide/a__b shared an upload
    prefix and a live record, so the second stage of the same tree said 'nothing to do'."""
    one = req(tmp_path, src=str(src), dest="data/reefguide/a/b")
    two = req(tmp_path, src=str(src), dest="data/reefguide/a__b")
    for key in ("dest_key", "run_prefix", "live_manifest_key", "staging", "staging_area"):
        assert one[key] != two[key], key
    # the record's old key is returned so that it can be dropped, never read
    assert one["legacy_live_manifest_key"] == two["legacy_live_manifest_key"] == \
        "reefguide-efs/live/data__reefguide__a__b.json"


@pytest.mark.parametrize("args, words", [
    ({"keep": -1}, "keep must be at least 0, got -1"),
    ({"keep": "abc"}, "keep must be a whole number, got 'abc'"),
    ({"upload_concurrency": 0}, "reefguide_upload_concurrency must be at least 1"),
    ({"upload_concurrency": "abc"}, "reefguide_upload_concurrency must be a whole number"),
    ({"pull_concurrency": 0}, "reefguide_pull_concurrency must be at least 1"),
    ({"dest": "data/reefguide/" + "x" * 600}, "dest is 615 bytes long; at most 512"),
])
def test_numbers_and_lengths_are_checked_before_anything_starts(tmp_path, src, args, words) -> None:
    args = dict({"dest": "data/reefguide/x"}, **args)
    r = req(tmp_path, src=str(src), **args)
    assert r.get("failed") and words in r["msg"] and "nothing started" in r["msg"], r
