"""stage_request refuses bad requests before anything starts, and resolves presets."""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import tarfile
import zipfile

import pytest

from helpers import run_module, tree


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
    # one rule, however the destination is spelled: the workers' root (and what holds it) merges
    for dest, mode in (("data/reefguide", "merge"), ("data/reefguide/", "merge"), ("data", "merge"),
                       ("data/reefguide/x", "replace"), ("data/other", "replace")):
        r = req(tmp_path, src=str(src), dest=dest, allowed_roots=["data"])
        assert (r["dest"], r["mode"]) == (dest.rstrip("/"), mode), r
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
# -- archives: '.'-rooted, limits, lying headers; src with no regular file; a private unpack dir --------------

def holds_nothing(path) -> bool:
    return not os.path.exists(path) or not os.listdir(path)


def test_a_dot_rooted_tar_is_accepted_and_unpacked_as_its_files(tmp_path) -> None:
    """`tar czf x.tar.gz -C dir .`: members '.', './a', './sub/b'."""
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "a.csv").write_bytes(b"a,b\n1,2\n")
    (d / "sub" / "b c.tif").write_bytes(b"\0raster" * 100)
    tgz = tmp_path / "x.tar.gz"
    subprocess.run(["tar", "czf", str(tgz), "-C", str(d), "."], check=True)
    with tarfile.open(tgz) as tf:
        assert "." in tf.getnames() and "./a.csv" in tf.getnames()
    r = req(tmp_path, src=str(tgz), dest="data/reefguide/x")
    assert not r.get("failed"), r["msg"]
    assert r["src_kind"] == "archive" and r["upload_path"] == str(tmp_path / "unpacked")
    assert tree(tmp_path / "unpacked") == tree(d)
    assert stat.S_IMODE(os.stat(tmp_path / "unpacked").st_mode) == 0o700

    # '..', absolute and link members are still refused, '.'-rooted or not; nothing is left unpacked
    for name, kind in (("./../up.txt", tarfile.REGTYPE), ("/etc/abs.txt", tarfile.REGTYPE),
                       ("./link", tarfile.SYMTYPE), ("./fifo", tarfile.FIFOTYPE), ("./dev", tarfile.CHRTYPE)):
        bad = tmp_path / "bad.tar.gz"
        with tarfile.open(bad, "w:gz") as tf:
            tf.add(str(d / "a.csv"), arcname="./ok.csv")
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tf.addfile(info, io.BytesIO(b""))
        r = req(tmp_path, src=str(bad), dest="data/reefguide/x", unpack_dir=str(tmp_path / "u-bad"))
        assert r.get("failed") and "nothing started" in r["msg"] and str(bad) in r["msg"], (name, r)
        assert holds_nothing(tmp_path / "u-bad"), name


def test_without_unpack_dir_each_run_unpacks_into_a_new_private_directory(tmp_path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    zpath = tmp_path / "p.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("a.txt", "a")
    args = {"src": str(zpath), "dest": "data/reefguide/x", "run_id": "run1"}
    one = run_module("stage_request", args, env={"TMPDIR": str(tmpdir)})
    two = run_module("stage_request", args, env={"TMPDIR": str(tmpdir)})
    assert not one.get("failed") and not two.get("failed"), (one, two)
    paths = {one["upload_path"], two["upload_path"]}
    assert len(paths) == 2, paths
    for path in paths:
        assert os.path.dirname(path) == str(tmpdir) and os.path.basename(path).startswith("reefguide-efs-unpack-run1-")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert tree(path) == {"a.txt": b"a"}


def test_an_existing_unpack_dir_is_refused_not_emptied(tmp_path) -> None:
    zpath = tmp_path / "p.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("a.txt", "new")
    busy = tmp_path / "busy"
    busy.mkdir(mode=0o700)
    (busy / "another-run.txt").write_text("keep me")
    r = req(tmp_path, src=str(zpath), dest="data/reefguide/x", unpack_dir=str(busy))
    assert r.get("failed") and "not empty" in r["msg"] and "reefguide_unpack_dir" in r["msg"], r
    assert tree(busy) == {"another-run.txt": b"keep me"}

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    r = req(tmp_path, src=str(zpath), dest="data/reefguide/x", unpack_dir=str(shared))
    assert r.get("failed") and "0700" in r["msg"], r
    assert os.listdir(shared) == []

    just_made = tmp_path / "just-made"  # empty and private: another run may have just made it
    just_made.mkdir()
    os.chmod(just_made, 0o700)
    r = req(tmp_path, src=str(zpath), dest="data/reefguide/x", unpack_dir=str(just_made))
    assert r.get("failed") and "another run's" in r["msg"] and "does not exist yet" in r["msg"], r
    assert just_made.is_dir() and os.listdir(just_made) == []

    r = req(tmp_path, src=str(zpath), dest="data/reefguide/x", unpack_dir=str(tmp_path / "new"))
    assert not r.get("failed") and tree(tmp_path / "new") == {"a.txt": b"new"}, r


def test_archive_size_and_member_limits_refuse_before_anything_is_written(tmp_path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (4 * 1024 * 1024))
    assert bomb.stat().st_size < 64 * 1024
    r = req(tmp_path, src=str(bomb), dest="data/reefguide/x", max_unpacked_bytes=1024 * 1024)
    assert r.get("failed") and "nothing started" in r["msg"], r
    for words in (str(bomb), "reefguide_archive_max_bytes", "1.0 MiB", "4.0 MiB", "raise"):
        assert words in r["msg"], (words, r["msg"])
    assert holds_nothing(tmp_path / "unpacked")

    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as tf:
        for i in range(20):
            info = tarfile.TarInfo("f%02d.txt" % i)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    r = req(tmp_path, src=str(many), dest="data/reefguide/x", max_members=10)
    assert r.get("failed") and "reefguide_archive_max_files" in r["msg"] and "10" in r["msg"], r
    assert holds_nothing(tmp_path / "unpacked")
    r = req(tmp_path, src=str(many), dest="data/reefguide/x", max_members=20)
    assert not r.get("failed") and len(tree(tmp_path / "unpacked")) == 20, r


def test_a_zip_whose_header_understates_a_member_is_stopped(tmp_path) -> None:
    """The index says 1,000 bytes; the data inflates to 1 MiB. Nothing stays unpacked."""
    liar = tmp_path / "liar.zip"
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.txt", b"ok")
        zf.writestr("big.bin", b"A" * (1024 * 1024))
    raw = bytearray(liar.read_bytes())
    name = b"big.bin"
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        pos = raw.find(sig)
        while raw[pos + size_at + (8 if sig == b"PK\x03\x04" else 22):][:len(name)] != name:
            pos = raw.find(sig, pos + 4)
        raw[pos + size_at:pos + size_at + 4] = struct.pack("<I", 1000)
    liar.write_bytes(bytes(raw))
    with zipfile.ZipFile(liar) as zf:
        assert zf.getinfo("big.bin").file_size == 1000
    r = req(tmp_path, src=str(liar), dest="data/reefguide/x")
    assert r.get("failed") and "nothing started" in r["msg"], r
    for words in (str(liar), "big.bin", "1000 bytes", "damaged or forged"):
        assert words in r["msg"], (words, r["msg"])
    assert holds_nothing(tmp_path / "unpacked")


def test_a_src_holding_no_regular_file_is_refused(tmp_path) -> None:
    d = tmp_path / "pipes"
    (d / "empty-sub").mkdir(parents=True)
    os.mkfifo(d / "queue")
    r = req(tmp_path, src=str(d), dest="data/reefguide/x")
    assert r.get("failed") and "nothing started" in r["msg"], r
    for words in ("src %s holds no regular file" % d, "FIFO", "1 directory", "nothing to stage"):
        assert words in r["msg"], (words, r["msg"])

    dirs_only = tmp_path / "dirs.zip"
    with zipfile.ZipFile(dirs_only, "w") as zf:
        zf.writestr("a/", "")
        zf.writestr("a/b/", "")
    r = req(tmp_path, src=str(dirs_only), dest="data/reefguide/x")
    assert r.get("failed") and "holds no regular file" in r["msg"] and "2 directories" in r["msg"], r
    assert holds_nothing(tmp_path / "unpacked")

    os.mkfifo(tmp_path / "lone-fifo")
    r = req(tmp_path, src=str(tmp_path / "lone-fifo"), dest="data/reefguide/x")
    assert r.get("failed") and "FIFO" in r["msg"] and "nothing to stage" in r["msg"], r


def test_a_member_that_holds_more_or_fewer_bytes_than_declared_is_stopped_at_the_declared_size(tmp_path) -> None:
    """The writer itself, whatever the archive library lets through: it reads at most one byte past the
    declared size."""
    from ansible.module_utils.reefguide.archives import ArchiveError, Member, _write_file

    class Stream(io.BytesIO):
        asked = 0

        def read(self, n=-1):
            Stream.asked += n if n > 0 else 10 ** 9
            return super().read(n)

    member = Member("m.bin", False, 1000, 0.0, None)
    with pytest.raises(ArchiveError, match="does not hold the 1000 bytes its header declares .it holds more"):
        _write_file("x.zip", Stream(b"A" * 10 ** 7), str(tmp_path / "more"), member)
    assert Stream.asked == 1001 and (tmp_path / "more").stat().st_size <= 1000
    with pytest.raises(ArchiveError, match="it holds fewer"):
        _write_file("x.zip", io.BytesIO(b"A" * 10), str(tmp_path / "fewer"), member)


def test_a_long_dest_gets_keys_that_fit_s3_and_efs(tmp_path, src) -> None:
    """A 302-character dest used to fail on the instance, in a staging name longer than a path
    component may be, with a message naming that internal name; its keys are now cut and hashed."""
    dest = "data/reefguide/" + "/".join(["d" * 40] * 7)[:287] + "x"
    assert len(dest) == 302
    r = req(tmp_path, src=str(src), dest=dest)
    assert not r.get("failed") and r["dest"] == dest, r
    assert len(r["dest_key"].encode()) <= 200 and len(r["run_prefix"].encode()) < 1024 - 512
    assert max(len(part.encode()) for part in r["staging"].split("/")) <= 255


def test_a_src_with_an_entry_where_the_workers_cache_lies_is_refused_before_anything_starts(tmp_path) -> None:
    """Every stage keeps the workers' cache: such a src used to fail only at the release."""
    as_dir = tmp_path / "as-dir"
    (as_dir / "cache").mkdir(parents=True)
    (as_dir / "cache" / "tile.bin").write_bytes(b"x")
    (as_dir / "config.toml").write_text("x = 1\n")
    as_file = tmp_path / "as-file"
    as_file.mkdir()
    (as_file / "cache").write_text("not a directory\n")
    deeper = tmp_path / "deeper"
    (deeper / "reefguide" / "cache").mkdir(parents=True)
    (deeper / "reefguide" / "config.toml").write_text("x = 1\n")
    for src, dest in ((as_dir, "data/reefguide"), (as_file, "data/reefguide"), (deeper, "data")):
        r = req(tmp_path, src=str(src), dest=dest, allowed_roots=["data"])
        assert r.get("failed") and "nothing started" in r["msg"], (src, r)
        inside = "reefguide/cache" if dest == "data" else "cache"
        assert ("src %s has %r, which lands on the workers' cache (EFS:data/reefguide/cache)" % (src, inside)
                in r["msg"]) and "Remove %r from src" % inside in r["msg"], r["msg"]
    # below the workers' root a directory named cache is just data
    assert not req(tmp_path, src=str(as_dir), dest="data/reefguide/pkg").get("failed")
    archive = tmp_path / "with-cache.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(as_dir, arcname=".")
    r = req(tmp_path, src=str(archive), dest="data/reefguide")
    assert r.get("failed") and "lands on the workers' cache" in r["msg"], r
    assert holds_nothing(tmp_path / "unpacked")  # what the refused request unpacked is gone
