"""run_request: teardown's and rollback's input refused on the controller, before anything starts."""

from __future__ import annotations

import pytest

from helpers import run_module


@pytest.mark.parametrize("args, words", [
    ({"keep": -1}, "keep must be at least 0, got -1"),
    ({"keep": "abc"}, "keep must be a whole number, got 'abc'"),
    ({"remove": "data/reefguide/x"}, "remove must be a list of paths"),
    ({"remove": ["data/reefguide/../../etc"]}, "contains '..'"),
    ({"remove": ["/data/reefguide/x"]}, "is absolute"),
    ({"remove": ["data/other"]}, "outside the allowed roots"),
    ({"remove": ["data/reefguide/cache"]}, "the workers' cache, which must always exist"),
    ({"remove": ["data/reefguide/cache/sub"]}, "the workers' cache"),
    # issue 23: the workers' root and what holds it, however spelled and whatever the allowed roots
    ({"remove": ["data/reefguide"]}, "data/reefguide is the workers' root"),
    ({"remove": ["data/reefguide/."]}, "data/reefguide is the workers' root"),
    ({"remove": ["data/reefguide/"]}, "data/reefguide is the workers' root"),
    ({"remove": ["data//reefguide"]}, "data/reefguide is the workers' root"),
    ({"remove": ["./data/reefguide"]}, "data/reefguide is the workers' root"),
    ({"remove": ["data"], "allowed_roots": ["data"]}, "data holds the workers' root"),
    ({"remove": ["data/reefguide"], "allowed_roots": ["data"]}, "data/reefguide is the workers' root"),
    ({"remove": ["data/reefguide/cache"], "allowed_roots": ["data"]}, "the workers' cache"),
])
def test_bad_teardown_input_is_refused(args, words) -> None:
    r = run_module("run_request", dict({"operation": "teardown"}, **args))
    assert r.get("failed") and words in r["msg"] and "nothing started" in r["msg"], r


def test_teardown_input_is_normalised_with_the_records_to_drop() -> None:
    r = run_module("run_request", {"operation": "teardown", "keep": "0", "remove": ["data/reefguide/k/"]})
    assert (r["keep"], r["remove"]) == (0, ["data/reefguide/k"])
    assert r["records"] == [{"dest": "data/reefguide/k",
                             "live_manifest_key": "reefguide-efs/live/data%2Freefguide%2Fk.json",
                             "legacy_live_manifest_key": "reefguide-efs/live/data__reefguide__k.json"}]
    assert (r["staging_root"], r["cache"]) == (".reefguide-staging", "data/reefguide/cache")


@pytest.mark.parametrize("args, words", [
    ({"dest": "../etc"}, "contains '..'"),
    ({"dest": "data/other"}, "outside the allowed roots"),
    ({"preset": "adria_datapackage", "package": "../../x"}, "is not a plain name"),
    ({"preset": "nope"}, "preset 'nope' is not one of"),
    ({}, "say where"),
    ({"dest": "data/reefguide/x", "release_id": "../x"}, "release_id '../x' is not a release id"),
])
def test_bad_rollback_input_is_refused(args, words) -> None:
    r = run_module("run_request", dict({"operation": "rollback"}, **args))
    assert r.get("failed") and words in r["msg"] and "nothing started" in r["msg"], r


def test_a_rollback_destination_is_the_one_a_stage_files_under() -> None:
    r = run_module("run_request", {"operation": "rollback", "dest": "data/reefguide/k/"})
    assert r["dest"] == "data/reefguide/k"
    assert r["live_manifest_key"] == "reefguide-efs/live/data%2Freefguide%2Fk.json"
