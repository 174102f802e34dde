"""The sync engine's saved state, read without S3: the checksum cache file
(module_utils/reefguide/checksums.py) and the bucket's manifest
(module_utils/reefguide/manifest.py). Fast: no servers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from ansible.module_utils.reefguide.checksums import (
    CacheEntry,
    ChecksumCache,
    file_key,
    local_sha256,
)
from ansible.module_utils.reefguide.local_tree import LocalFile, Matcher
from ansible.module_utils.reefguide.manifest import (
    MANIFEST_FORMAT,
    UNREADABLE,
    apply_manifest_doc,
    manifest_doc,
    parse_manifest,
    state_from_listing,
)

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
OLD = 1_600_000_000_123_456_789  # an mtime long before any hashing: never "racy"


# --------------------------------------------------------------------------
# checksum cache


def write_cache(path: Path, root: Path, files: dict) -> None:
    """A cache file as the engine has written it since version 1 (a list per file)."""
    doc = {"version": 1, "root": os.path.realpath(root), "files": files}
    path.write_text(json.dumps(doc, separators=(",", ":")))


def test_a_cache_entry_from_the_existing_json_format_is_read_by_name(tmp_path: Path) -> None:
    cache_file = tmp_path / "cache.json"
    write_cache(cache_file, tmp_path, {"d/a.txt": [1, OLD, 7, OLD + 1, SHA_A, "etag-a"]})
    entry = ChecksumCache(str(cache_file), str(tmp_path)).lookup("d/a.txt", [1, OLD, 7, OLD + 1])
    assert entry == CacheEntry(size=1, mtime_ns=OLD, ino=7, ctime_ns=OLD + 1, sha256=SHA_A, etag="etag-a")
    assert (entry.sha256, entry.etag) == (SHA_A, "etag-a")


def test_a_cache_entry_is_ignored_once_the_stat_changes_or_the_entry_is_malformed(tmp_path: Path) -> None:
    cache_file = tmp_path / "cache.json"
    write_cache(cache_file, tmp_path, {"a": [1, OLD, 7, OLD, SHA_A, None], "short": [1, OLD, 7, OLD, SHA_A]})
    cache = ChecksumCache(str(cache_file), str(tmp_path))
    assert cache.lookup("a", [1, OLD, 7, OLD]) is not None
    assert cache.lookup("a", [1, OLD + 1, 7, OLD]) is None  # touched
    assert cache.lookup("a", [2, OLD, 7, OLD]) is None  # resized
    assert cache.lookup("short", [1, OLD, 7, OLD]) is None
    assert cache.lookup("missing", [1, OLD, 7, OLD]) is None


def test_a_cache_of_another_root_or_version_is_not_used(tmp_path: Path) -> None:
    cache_file = tmp_path / "cache.json"
    write_cache(cache_file, tmp_path / "elsewhere", {"a": [1, OLD, 7, OLD, SHA_A, None]})
    assert ChecksumCache(str(cache_file), str(tmp_path)).lookup("a", [1, OLD, 7, OLD]) is None
    cache_file.write_text(json.dumps({"version": 2, "root": os.path.realpath(tmp_path),
                                      "files": {"a": [1, OLD, 7, OLD, SHA_A, None]}}))
    assert ChecksumCache(str(cache_file), str(tmp_path)).lookup("a", [1, OLD, 7, OLD]) is None


def test_the_cache_still_saves_the_json_format_older_runs_read(tmp_path: Path) -> None:
    cache_file = tmp_path / "cache.json"
    cache = ChecksumCache(str(cache_file), str(tmp_path))
    cache.store("kept", [1, OLD, 7, OLD], SHA_A, "etag-a", hashed_at_ns=OLD + 10**12)
    cache.store("gone", [1, OLD, 8, OLD], SHA_B, None, hashed_at_ns=OLD + 10**12)
    cache.store("racy", [1, OLD + 1, 9, OLD], SHA_B, None, hashed_at_ns=OLD + 2)  # hashed as it was written
    cache.save({"kept", "racy"})
    doc = json.loads(cache_file.read_text())
    assert doc == {"version": 1, "root": os.path.realpath(tmp_path),
                   "files": {"kept": [1, OLD, 7, OLD, SHA_A, "etag-a"]}}


def test_local_sha256_reads_a_file_once_then_takes_it_from_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"a")
    os.utime(path, ns=(OLD, OLD))
    st = path.stat()
    lf = LocalFile("f.bin", str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    cache = ChecksumCache(None, str(tmp_path))
    sizes: list[int] = []
    assert local_sha256(lf, cache, sizes.append) == (SHA_A, None)
    assert sizes == [1]
    cache.store("f.bin", file_key(lf), SHA_B, "etag-b", hashed_at_ns=OLD + 10**12)  # pretend: synced since
    assert local_sha256(lf, cache, sizes.append) == (SHA_B, "etag-b")
    assert sizes == [1]  # not read again
    assert local_sha256(lf, None) == (SHA_A, None)  # no cache: always read


# --------------------------------------------------------------------------
# remote listing and manifest


def listing(*objs: tuple[str, int, str]) -> list[tuple[str, int, str, str]]:
    return [(key, size, etag, "2024-01-02T03:04:05.678Z") for key, size, etag in objs]


def test_the_listing_keeps_files_markers_and_the_manifest_apart() -> None:
    state = state_from_listing(
        listing(("p/a.txt", 1, "ea"), ("p/dir/", 0, "e0"), ("p/.reefguide-manifest.json", 9, "em"),
                ("p/x.log", 1, "ex"), ("p/../escape", 1, "eb")),
        "p/", Matcher(["*.log"]))  # fmt: skip
    assert sorted(state.files) == ["a.txt"]
    assert state.markers == {"dir"}
    assert state.manifest_etag == "em"
    assert len(state.bad) == 1 and "escape" in state.bad[0]
    assert state.files["a.txt"].mtime_ns == 1704164645678000000


def manifest_bytes(files: dict, dirs: list) -> bytes:
    return json.dumps({"format": MANIFEST_FORMAT, "version": 1, "files": files, "dirs": dirs}).encode()


def test_a_manifest_entry_gives_its_sha256_only_while_size_and_etag_match() -> None:
    state = state_from_listing(listing(("a", 1, "ea"), ("b", 1, "eb-new"), ("c", 2, "ec")), "", Matcher([]))
    doc = parse_manifest(manifest_bytes({
        "a": {"size": 1, "sha256": SHA_A, "etag": "ea", "mtime_ns": OLD},
        "b": {"size": 1, "sha256": SHA_B, "etag": "eb-old", "mtime_ns": OLD},
        "c": {"size": 1, "sha256": SHA_B, "etag": "ec"},
        "gone": {"size": 1, "sha256": SHA_B, "etag": "eg"},
    }, ["empty", "../bad"]))  # fmt: skip
    apply_manifest_doc(doc, state)
    assert state.files["a"].sha256 == SHA_A and state.files["a"].mtime_ns == OLD
    assert state.files["b"].sha256 is None  # replaced since the manifest was written
    assert state.files["c"].sha256 is None  # another size
    assert state.manifest_dirs == ["empty"]
    assert state.bad == ["manifest directory '../bad'"]


@pytest.mark.parametrize("data", [b"not json", b'{"format": "other", "files": {}}', b'{"format": "%s"}'
                                  % MANIFEST_FORMAT.encode(), b"\xff", b"[1, 2]"])
def test_an_unreadable_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(UNREADABLE):
        parse_manifest(data)


def test_the_manifest_written_after_a_push_lists_what_is_known_and_is_not_rewritten_unchanged() -> None:
    state = state_from_listing(listing(("a", 1, "ea"), ("old", 1, "eo"), ("unknown", 1, "eu")), "", Matcher([]))
    apply_manifest_doc(parse_manifest(manifest_bytes({
        "a": {"size": 1, "sha256": SHA_A, "etag": "ea", "mtime_ns": OLD},
        "old": {"size": 1, "sha256": SHA_B, "etag": "eo", "mtime_ns": OLD},
    }, ["kept"])), state)  # fmt: skip
    doc = manifest_doc(state, {"new": (SHA_B, "en", 1, OLD)}, ["e1"], deleted={"old"}, keep_dirs=True)
    assert doc is not None and doc["format"] == MANIFEST_FORMAT
    assert doc["files"] == {"a": {"size": 1, "sha256": SHA_A, "etag": "ea", "mtime_ns": OLD},
                            "new": {"size": 1, "sha256": SHA_B, "etag": "en", "mtime_ns": OLD}}
    assert doc["dirs"] == ["e1", "kept"]  # merge keeps the directories the manifest had
    assert manifest_doc(state, {}, [], deleted=set(), keep_dirs=False)["dirs"] == []
    state.manifest = doc
    assert manifest_doc(state, {"new": (SHA_B, "en", 1, OLD)}, ["e1"], deleted={"old"}, keep_dirs=True) is None
