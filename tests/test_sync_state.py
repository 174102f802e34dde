"""The sync engine's saved state, read without S3: the checksum cache file
(module_utils/reefguide/checksums.py) and the bucket's manifest
(module_utils/reefguide/manifest.py). Fast: no servers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ansible.module_utils.reefguide.checksums import (
    CacheEntry,
    ChecksumCache,
    file_key,
    local_sha256,
)
from ansible.module_utils.reefguide.local_tree import LocalFile

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
