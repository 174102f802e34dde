"""The checksum cache's key (module_utils/reefguide/checksums.py) on real files: a hard link (the
stage's staging copy) leaves a pull destination's entries valid, and no edit a user makes (a
rewrite, a truncation, another file of the same size copied or moved over it) is taken for
unchanged. Fast: no servers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ansible.module_utils.reefguide.checksums import ChecksumCache, file_key, local_sha256
from ansible.module_utils.reefguide.local_tree import LocalFile, Matcher, scan_dest

OLD_NS = 1_600_000_000_123_456_789  # an mtime long before the hashing: never "racy"


def local(root: Path, rel: str) -> LocalFile:
    return scan_dest(str(root), Matcher(None)).files[rel]


def written(path: Path, data: bytes, mtime_ns: int = OLD_NS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def next_tick() -> None:
    """Past the kernel's coarse timestamp tick, so the next metadata change gets a new ctime."""
    time.sleep(0.03)


def sha_via_cache(cache: ChecksumCache, root: Path, rel: str) -> tuple[str, int]:
    """(the SHA-256 local_sha256 gives, bytes it read) for root/rel."""
    read: list[int] = []
    sha, _ = local_sha256(local(root, rel), cache, read.append)
    return sha, sum(read)


def warm(tmp_path: Path, with_ctime: bool, data: bytes = b"x" * 4096) -> tuple[ChecksumCache, Path]:
    root = tmp_path / "dest"
    written(root / "f.bin", data)
    cache = ChecksumCache(str(tmp_path / "cache.json"), str(root), with_ctime=with_ctime)
    assert sha_via_cache(cache, root, "f.bin") == (hashlib.sha256(data).hexdigest(), len(data))
    return cache, root


def test_a_hard_link_leaves_a_pull_entry_valid_but_not_a_push_entry(tmp_path: Path) -> None:
    for with_ctime, reads_after_link in ((False, 0), (True, 4096)):
        cache, root = warm(tmp_path / str(with_ctime), with_ctime)
        before = os.lstat(root / "f.bin")
        next_tick()
        os.link(root / "f.bin", root.parent / "elsewhere.bin")  # as efs_staging's copy does
        assert os.lstat(root / "f.bin").st_ctime_ns != before.st_ctime_ns
        assert sha_via_cache(cache, root, "f.bin")[1] == reads_after_link


def test_the_pull_entry_survives_the_stage_cycle_of_rename_and_hard_link_copy(tmp_path: Path) -> None:
    """Pulled into the staging path, released by a rename, copied back as hard links: the next
    pull's comparison reads nothing, from a cache saved and loaded again."""
    staging, live = tmp_path / "staging", tmp_path / "live"
    written(staging / "a" / "one.bin", b"1" * 1000)
    cache_file = str(tmp_path / "cache.json")
    cache = ChecksumCache(cache_file, str(staging), with_ctime=False)
    assert sha_via_cache(cache, staging, "a/one.bin")[1] == 1000
    cache.save({"a/one.bin"})
    os.rename(staging, live)
    next_tick()
    shutil.copytree(live, staging, copy_function=os.link)
    again = ChecksumCache(cache_file, str(staging), with_ctime=False)
    assert again.bytes_read == os.path.getsize(cache_file)
    assert sha_via_cache(again, staging, "a/one.bin") == (hashlib.sha256(b"1" * 1000).hexdigest(), 0)


def test_edits_a_user_makes_are_never_taken_for_unchanged(tmp_path: Path) -> None:
    other = written(tmp_path / "other.bin", b"y" * 4096)
    edits = {
        "rewritten in place": lambda f: f.write_bytes(b"z" * 4096),
        "truncated": lambda f: os.truncate(f, 100),
        "copied over by a file of the same size": lambda f: shutil.copyfile(other, f),
        "copied over, times kept (cp -p)": lambda f: shutil.copy2(other, f),
        "moved over by a file of the same size": lambda f: os.replace(written(f.with_name("new"), b"w" * 4096), f),
    }
    for with_ctime in (False, True):
        for name, edit in edits.items():
            cache, root = warm(tmp_path / ("%s-%s" % (with_ctime, name)).replace(" ", "_"), with_ctime)
            written(other, b"y" * 4096, OLD_NS + 10**9)  # another mtime than f.bin's
            edit(root / "f.bin")
            want = hashlib.sha256((root / "f.bin").read_bytes()).hexdigest()
            sha, read = sha_via_cache(cache, root, "f.bin")
            assert (sha, read > 0) == (want, True), (name, with_ctime)


def test_the_edit_a_pull_entry_misses_is_one_that_restores_size_and_mtime(tmp_path: Path) -> None:
    """What checksums.py documents: in place, same size, the mtime put back to the nanosecond.
    The push key (with ctime) sees it; the pull key does not, so a pull after such a hand edit
    needs rehash (or a rollback first)."""
    for with_ctime, seen in ((True, True), (False, False)):
        cache, root = warm(tmp_path / str(with_ctime), with_ctime)
        next_tick()
        written(root / "f.bin", b"q" * 4096, OLD_NS)
        sha, _ = sha_via_cache(cache, root, "f.bin")
        assert (sha == hashlib.sha256(b"q" * 4096).hexdigest()) is seen


def test_forgotten_entries_are_gone_from_the_saved_file(tmp_path: Path) -> None:
    cache, root = warm(tmp_path, with_ctime=False)
    written(root / "g.bin", b"g")
    sha_via_cache(cache, root, "g.bin")
    cache.save({"f.bin", "g.bin"})
    cache.forget(["f.bin"])
    cache.save({"f.bin", "g.bin"})
    assert set(json.loads((tmp_path / "cache.json").read_text())["files"]) == {"g.bin"}
    assert cache.lookup("f.bin", file_key(local(root, "f.bin"))) is None
