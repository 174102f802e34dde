"""live_manifest's pending mark, against the lab's S3: a record marked before an operation at its
destination is never taken for what is live until the operation writes what it did (present,
absent), or says it touched nothing (settled). The playbooks' use of it: test_interruptions.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from helpers import run_module_direct
from lab import Lab

PREFIX = "reefguide-efs/test-pending/"


def call(lab: Lab, check: bool = False, **args: Any) -> dict[str, Any]:
    args.setdefault("bucket", lab.bucket)
    return run_module_direct("live_manifest", args, check, False, lab.env, None, None)


def key(dest: str) -> str:
    return PREFIX + dest.replace("/", "%2F") + ".json"


def src(tmp_path: Path, name: str, text: str) -> tuple[Path, str]:
    """A local tree of one file, and the key of the run manifest its push would have written."""
    root = tmp_path / name
    root.mkdir()
    (root / "a.csv").write_text(text)
    manifest = PREFIX + "runs/%s.json" % name
    return root, manifest


def push_manifest(lab: Lab, manifest: str, root: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in root.iterdir()}
    lab.client("s3").put_object(Bucket=lab.bucket, Key=manifest, Body=json.dumps({"files": files}).encode())


def record(lab: Lab, dest: str) -> dict[str, Any]:
    try:
        return json.loads(lab.client("s3").get_object(Bucket=lab.bucket, Key=key(dest))["Body"].read())
    except lab.client("s3").exceptions.NoSuchKey:
        return {}


def compared(lab: Lab, dest: str, root: Path) -> dict[str, Any]:
    return call(lab, key=key(dest), dest=dest, path=str(root))


def test_a_marked_record_is_not_taken_for_what_is_live_until_the_operation_says_what_it_did(
        lab: Lab, tmp_path: Path) -> None:
    dest = "data/reefguide/pend"
    v1, m1 = src(tmp_path, "v1", "one\n")
    push_manifest(lab, m1, v1)
    # records above and below: the release can make the one above untrue; the release below stays
    # (recorded in this order: each release drops the records above it)
    above, below = "data/reefguide", dest + "/pkg"
    for other, rid in ((below, "rb"), (dest, "r1"), (above, "r0")):
        done = call(lab, state="present", key=key(other), dest=other, source_key=m1, release_id=rid)
        assert not done.get("failed"), done
    assert compared(lab, dest, v1)["equal"] and record(lab, above) and record(lab, below)

    # a check run marks nothing
    assert call(lab, check=True, state="pending", key=key(dest), dest=dest, release_id="run-2")["changed"]
    assert "pending" not in record(lab, dest)
    marked = call(lab, state="pending", key=key(dest), dest=dest, release_id="run-2", path=str(v1))
    assert marked["changed"] and marked["pending"] == "run-2" and marked["dropped"] == [above], marked
    assert record(lab, below) and not record(lab, above)
    now = compared(lab, dest, v1)
    assert not now["equal"] and now["pending"] == "run-2" and now["recorded"] and now["release_id"] == "r1", now

    # another run's settling leaves the mark; the marking run's takes it off
    assert not call(lab, state="settled", key=key(dest), dest=dest, release_id="run-3")["changed"]
    assert record(lab, dest)["pending"] == "run-2"
    assert call(lab, state="settled", key=key(dest), dest=dest, release_id="run-2")["changed"]
    assert compared(lab, dest, v1)["equal"]

    # marked again, then the release recorded: the mark goes with the new record
    v2, m2 = src(tmp_path, "v2", "two\n")
    push_manifest(lab, m2, v2)
    # the mark in the listing before a remote part (one task): listed and marked
    listing = call(lab, state="listed", prefix=PREFIX, key=key(dest), dest=dest, release_id="run-4", path=str(v2))
    assert listing["pending"] == "run-4" and dest in [r["dest"] for r in listing["records"]], listing
    assert record(lab, dest)["pending"] == "run-4"
    assert call(lab, state="present", key=key(dest), dest=dest, source_key=m2, release_id="run-4")["changed"]
    assert "pending" not in record(lab, dest) and compared(lab, dest, v2)["equal"]
    # the same release recorded again over a mark is still written (the mark must go)
    call(lab, state="pending", key=key(dest), dest=dest, release_id="run-5")
    assert call(lab, state="present", key=key(dest), dest=dest, source_key=m2, release_id="run-4")["changed"]
    assert compared(lab, dest, v2)["equal"]


def test_a_mark_where_there_was_no_record_records_nothing_and_goes_whole(lab: Lab, tmp_path: Path) -> None:
    dest = "data/reefguide/fresh"
    v1, _ = src(tmp_path, "v1", "one\n")
    assert call(lab, state="pending", key=key(dest), dest=dest, release_id="run-1")["recorded"] is False
    now = compared(lab, dest, v1)
    assert not now["equal"] and not now["recorded"] and now["pending"] == "run-1", now
    listed = call(lab, state="listed", prefix=PREFIX)
    assert dest not in listed["fingerprinted"]
    assert call(lab, state="settled", key=key(dest), dest=dest, release_id="run-1")["changed"]
    assert record(lab, dest) == {}  # nothing but the mark was there
    # a rollback or removal forgets the record, mark and all
    call(lab, state="pending", key=key(dest), dest=dest, release_id="run-2")
    assert call(lab, state="absent", key=key(dest), dest=dest)["changed"]
    assert record(lab, dest) == {}
