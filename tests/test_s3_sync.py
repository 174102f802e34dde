"""s3_sync: push and pull between a local tree and s3://bucket/prefix.

Behaviour tests run the module through ansible (tests/helpers.run_module);
finer ones call the engine (module_utils/reefguide/sync*.py) directly. The S3
endpoints are a moto server (what the lab uses) and, for names moto cannot
route (a newline in a key), rclone's S3 server, which also checks every
request's SigV4 signature. Both are started here on loopback and stopped by
pid."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import boto3
import pytest
from ansible.module_utils.reefguide.s3_client import S3Client
from ansible.module_utils.reefguide.sync import Sync
from ansible.module_utils.reefguide.sync_common import MANIFEST_NAME, TMP_RE, SyncError
from ansible.module_utils.reefguide.sync_options import SyncOptions

from helpers import ROOT, VENV_BIN, run_module

MiB = 1024 * 1024
ENGINE = ROOT / "scripts" / "reefguide-sync"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}

# Names that break shell-built commands, URL encoding or XML.
NASTY = [
    "with space.txt",
    "single'quote",
    'double"quote',
    "$(touch pwned)",
    "`backtick`",
    "-leading-dash",
    "--help",
    "ünïcödé-名前-🐠.txt",
    "tab\there",
    "plus+and%20percent",
    "amp&<lt>gt",
    "back\\slash",
    "semi;colon|pipe",
    "star*?question",
    "#hash ~tilde",
    "sub dir/ünï/deep file.txt",
    "sub dir/.hidden",
]
NEWLINE = "new\nline.txt"  # moto cannot route it; tested against rclone


# --------------------------------------------------------------------------
# servers


class Server(NamedTuple):
    name: str
    endpoint: str

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **_boto_creds())

    def new_bucket(self) -> str:
        bucket = "t-" + uuid.uuid4().hex[:16]
        self.s3().create_bucket(Bucket=bucket)
        return bucket


def _boto_creds() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(argv: list[str], port: int, log: Path, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError("%s exited early: %s" % (argv[0], log.read_text(errors="replace")))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    _stop(proc)
    raise RuntimeError("%s did not listen on port %d" % (argv[0], port))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = _start([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, log)
    try:
        yield Server("moto", "http://127.0.0.1:%d" % port)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def rclone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = _free_port()
    base = tmp_path_factory.mktemp("rclone")
    (base / "data").mkdir()
    argv = [
        str(VENV_BIN / "rclone"),
        "serve",
        "s3",
        "--config",
        "/dev/null",
        "--auth-key",
        "testing,testing",
        "--addr",
        "127.0.0.1:%d" % port,
        str(base / "data"),
    ]
    proc = _start(argv, port, base / "rclone.log")
    try:
        yield Server("rclone", "http://127.0.0.1:%d" % port)
    finally:
        _stop(proc)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Credentials for the engine in this process, and a private checksum
    cache directory (XDG_CACHE_HOME) per test."""
    env = dict(CREDS, XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# --------------------------------------------------------------------------
# helpers


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(root: Path, names: list[str], seed: str = "") -> Path:
    for i, name in enumerate(names):
        write(root / name, ("%s%d:%s\n" % (seed, i, name)).encode() * (i + 1))
    write(root / "empty-file", b"")
    (root / "empty dir" / "nested empty").mkdir(parents=True, exist_ok=True)
    return age(root)


def age(root: Path) -> Path:
    """Dates every file a minute back, as data waiting to be staged is: the
    checksum cache does not trust a file modified within 100 ms of hashing."""
    past = time.time_ns() - 60 * 10**9
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, ns=(past, past))
    return root


def snapshot(root: Path) -> dict[bytes, Optional[bytes]]:
    """Every entry below root by its byte path: file contents, None for a
    directory. Temporaries and partial files would show up here too."""
    out: dict[bytes, Optional[bytes]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), base)] = None
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, base)] = fh.read()
    return out


def keys(server: Server, bucket: str, prefix: str = "") -> dict[str, str]:
    """key -> ETag of every object in the bucket (under prefix)."""
    out = {}
    for page in server.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["ETag"]
    return out


def engine(server: Server, direction: str, path: Path, bucket: str, prefix: str = "data", **kw: Any) -> dict:
    opts = SyncOptions(
        direction=direction, bucket=bucket, prefix=prefix, path=str(path), endpoint_url=server.endpoint, **kw
    )
    return Sync(opts).run()


def module_env(server: Server, aws_env: dict[str, str]) -> dict[str, str]:
    return dict(aws_env, AWS_ENDPOINT_URL=server.endpoint)


def raw_put(server: Server, bucket: str, key: str, data: bytes, **headers: str) -> None:
    """PUT with the key sent exactly as given (boto3's HTTP stack may
    normalise '..' in URLs): how a hostile object gets planted."""
    from botocore.credentials import Credentials

    client = S3Client(bucket, Credentials("testing", "testing"), "us-east-1", server.endpoint)
    client.call("PutObject", "PUT", key, headers=headers, body=data, payload_hash=hashlib.sha256(data).hexdigest())


# --------------------------------------------------------------------------
# round trips, idempotency


def test_push_then_pull_gives_identical_tree_and_reruns_change_nothing(
    moto: Server, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    """Through ansible: nasty names, a 0-byte file and empty directories
    survive byte for byte; second runs report changed=false, transfer 0."""
    src = make_tree(tmp_path / "src", NASTY)
    dest = tmp_path / "dest"
    bucket = moto.new_bucket()
    env = module_env(moto, aws_env)
    args = {"bucket": bucket, "prefix": "staging/set one"}

    pushed = run_module("s3_sync", dict(args, direction="push", path=str(src)), env=env)
    assert pushed.get("failed") is not True, pushed.get("msg")
    assert pushed["changed"] is True
    assert pushed["transferred"]["files"] == len(NASTY) + 1

    pulled = run_module("s3_sync", dict(args, direction="pull", path=str(dest)), env=env)
    assert pulled.get("failed") is not True, pulled.get("msg")
    assert pulled["changed"] is True
    assert snapshot(dest) == snapshot(src)

    again_push = run_module("s3_sync", dict(args, direction="push", path=str(src)), env=env)
    again_pull = run_module("s3_sync", dict(args, direction="pull", path=str(dest)), env=env)
    for again in (again_push, again_pull):
        assert again["changed"] is False, again
        assert again["transferred"] == {"files": 0, "bytes": 0}
        assert again["hashed"]["files"] == 0  # answered by the checksum cache
    assert snapshot(dest) == snapshot(src)


def test_every_pushed_object_carries_sha256_and_encryption(moto: Server, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", ["a.txt", "b/c.bin"])
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket)
    s3 = moto.s3()
    for rel in ("a.txt", "b/c.bin", "empty-file"):
        head = s3.head_object(Bucket=bucket, Key="data/" + rel)
        assert head["Metadata"]["sha256"] == hashlib.sha256((src / rel).read_bytes()).hexdigest()
        assert head["ServerSideEncryption"] == "AES256"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="data/" + MANIFEST_NAME)["Body"].read())
    assert set(manifest["files"]) == {"a.txt", "b/c.bin", "empty-file"}
    assert manifest["dirs"] == ["empty dir/nested empty"]


def test_nasty_names_including_newline_round_trip_on_a_signature_checking_server(
    rclone: Server, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", NASTY + [NEWLINE, "dir\nwith newline/file"])
    dest = tmp_path / "dest"
    bucket = rclone.new_bucket()
    assert engine(rclone, "push", src, bucket)["transferred"]["files"] == len(NASTY) + 3
    assert NEWLINE in {k[len("data/") :] for k in keys(rclone, bucket, "data/")}
    pulled = engine(rclone, "pull", dest, bucket)
    # once in a fresh-clone run under load it said 21: what it did and what was listed, to find out
    assert pulled["transferred"]["files"] == len(NASTY) + 3, (pulled, sorted(keys(rclone, bucket, "data/")))
    assert snapshot(dest) == snapshot(src)
    assert engine(rclone, "pull", dest, bucket)["changed"] is False


def test_no_op_resync_needs_one_listing_and_one_manifest_read(moto: Server, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", ["f%02d" % i for i in range(30)])
    dest = tmp_path / "dest"
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket)
    engine(moto, "pull", dest, bucket)
    for result in (engine(moto, "push", src, bucket), engine(moto, "pull", dest, bucket)):
        assert result["changed"] is False
        assert result["requests"] == {"ListObjectsV2": 1, "GetObject": 1}
        assert result["hashed"]["files"] == 0

    # Without the local cache the files are read once, but the remote side is
    # still answered by the manifest: no HEAD per object.
    cold = engine(moto, "push", src, bucket, use_checksum_cache=False)
    assert cold["changed"] is False
    assert cold["hashed"]["files"] == 31
    assert "HeadObject" not in cold["requests"]

    # Without the manifest the object metadata answers (one HEAD each), and
    # the manifest is written again.
    moto.s3().delete_object(Bucket=bucket, Key="data/" + MANIFEST_NAME)
    healed = engine(moto, "push", src, bucket, rehash=True)
    assert healed["changed"] is False
    assert healed["requests"]["HeadObject"] == 31
    assert healed["manifest_written"] is True
    assert "HeadObject" not in engine(moto, "push", src, bucket, rehash=True)["requests"]


def test_one_changed_file_transfers_exactly_that_file(moto: Server, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", ["a/%d.csv" % i for i in range(20)])
    dest = tmp_path / "dest"
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket)
    engine(moto, "pull", dest, bucket)

    write(src / "a/7.csv", b"changed, same length?" * 3)
    pushed = engine(moto, "push", src, bucket)
    assert pushed["transferred"]["files"] == 1
    assert pushed["plan"]["upload"]["first"] == ["a/7.csv"]
    assert pushed["hashed"]["files"] == 0  # the changed file is hashed while it is sent

    pulled = engine(moto, "pull", dest, bucket)
    assert pulled["transferred"]["files"] == 1
    assert pulled["plan"]["download"]["first"] == ["a/7.csv"]
    assert snapshot(dest) == snapshot(src)


def test_same_size_change_with_preserved_mtime_is_still_detected(moto: Server, tmp_path: Path) -> None:
    """The cache key includes inode and ctime: rewriting a file to the same
    size and putting its mtime back does not fool it."""
    src = make_tree(tmp_path / "src", ["x.txt"])
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket)
    target = src / "x.txt"
    before = target.stat()
    target.write_bytes(target.read_bytes().upper())
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert engine(moto, "push", src, bucket)["transferred"]["files"] == 1


# --------------------------------------------------------------------------
# mirror, exclude, max_delete


def test_push_mirror_deletes_extras_only_below_the_prefix(moto: Server, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", ["keep.txt", "d/keep2.txt"])
    bucket = moto.new_bucket()
    s3 = moto.s3()
    for key in ("data/extra.txt", "data/d/extra2.txt", "data-old/x.txt", "other/y.txt", "dataz"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")

    merged = engine(moto, "push", src, bucket)
    assert merged["deleted"] == {"files": 0}
    assert "data/extra.txt" in keys(moto, bucket)

    mirrored = engine(moto, "push", src, bucket, mode="mirror")
    assert mirrored["deleted"] == {"files": 2}
    assert sorted(mirrored["plan"]["delete"]["first"]) == ["d/extra2.txt", "extra.txt"]
    remaining = set(keys(moto, bucket))
    assert {"data-old/x.txt", "other/y.txt", "dataz"} <= remaining
    assert not {"data/extra.txt", "data/d/extra2.txt"} & remaining


def test_pull_mirror_deletes_extras_only_inside_the_destination(moto: Server, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", ["a.txt", "sub/b.txt"])
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket)
    dest = tmp_path / "dest"
    outside = write(tmp_path / "outside" / "precious.txt", b"keep me")
    engine(moto, "pull", dest, bucket)
    write(dest / "extra.txt", b"x")
    write(dest / "old dir" / "deep" / "x.txt", b"x")
    write(dest / "cache" / "worker.bin", b"excluded")
    (dest / "link-out").symlink_to(outside.parent)

    result = engine(moto, "pull", dest, bucket, mode="mirror", exclude=["cache"])
    assert result["changed"] is True
    assert result["deleted"] == {"files": 3}  # extra.txt, old dir/deep/x.txt, the symlink itself
    assert result["dirs_removed"] == 2
    assert (dest / "cache" / "worker.bin").read_bytes() == b"excluded"
    assert outside.read_bytes() == b"keep me"
    assert not (dest / "link-out").exists() and not (dest / "old dir").exists()
    assert snapshot(dest) == {**snapshot(src), b"cache": None, b"cache/worker.bin": b"excluded"}


def test_mirror_refuses_more_deletions_than_max_delete(moto: Server, tmp_path: Path) -> None:
    bucket = moto.new_bucket()
    for i in range(5):
        moto.s3().put_object(Bucket=bucket, Key="data/old%d" % i, Body=b"x")
    src = make_tree(tmp_path / "src", ["new.txt"])
    with pytest.raises(SyncError, match="would delete 5 entries, more than max_delete=3"):
        engine(moto, "push", src, bucket, mode="mirror", max_delete=3)
    assert len(keys(moto, bucket, "data/old")) == 5
    assert "data/new.txt" not in keys(moto, bucket)  # refused before any transfer


# --------------------------------------------------------------------------
# check mode and diff


def test_check_mode_predicts_the_real_run_and_changes_nothing(
    moto: Server, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    src = make_tree(tmp_path / "src", ["a.txt", "b.txt", "c/d.txt"])
    dest = tmp_path / "dest"
    bucket = moto.new_bucket()
    env = module_env(moto, aws_env)
    engine(moto, "push", src, bucket)
    engine(moto, "pull", dest, bucket)
    write(src / "b.txt", b"new content")
    write(src / "e/new.txt", b"new file")
    (src / "a.txt").unlink()
    write(dest / "stray.txt", b"stray")
    args = {"bucket": bucket, "prefix": "data", "mode": "mirror"}

    for direction, path in (("push", src), ("pull", dest)):
        before_keys, before_tree = keys(moto, bucket), snapshot(dest)
        checked = run_module("s3_sync", dict(args, direction=direction, path=str(path)), check=True, diff=True, env=env)
        assert checked.get("failed") is not True, checked.get("msg")
        assert checked["changed"] is True
        assert keys(moto, bucket) == before_keys and snapshot(dest) == before_tree
        assert checked["transferred"] == {"files": 0, "bytes": 0}
        real = run_module("s3_sync", dict(args, direction=direction, path=str(path)), env=env)
        assert real["plan"] == checked["plan"]
        verb = "upload" if direction == "push" else "download"
        assert real["transferred"]["files"] == checked["plan"][verb]["files"]
        assert real["transferred"]["bytes"] == checked["plan"][verb]["bytes"]
        assert real["deleted"]["files"] == checked["plan"]["delete"]["files"]
        diff = checked["diff"]["prepared"]
        assert "+ b.txt" in diff and "+ e/new.txt" in diff

    assert checked["plan"]["download"]["first"] == ["b.txt", "e/new.txt"]
    assert checked["plan"]["delete"]["first"] == ["a.txt", "stray.txt"]
    assert "- stray.txt" in diff
    assert snapshot(dest) == snapshot(src)


# --------------------------------------------------------------------------
# path safety


@pytest.mark.parametrize(
    "planted, reason",
    [
        ("data/../escaped.txt", "contains '..'"),
        ("data/a/../../escaped.txt", "contains '..'"),
        ("data//etc/escaped.txt", "is absolute"),
        ("data/./x", "cannot be stored as given"),
        ("data/.x.reefguide-tmp-0123456789ab", "temporary files"),
    ],
)
def test_pull_refuses_keys_that_would_leave_the_destination(
    moto: Server, tmp_path: Path, planted: str, reason: str
) -> None:
    bucket = moto.new_bucket()
    moto.s3().put_object(Bucket=bucket, Key="data/good.txt", Body=b"good")
    raw_put(moto, bucket, planted, b"evil")
    assert planted in keys(moto, bucket)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(SyncError) as info:
        engine(moto, "pull", dest, bucket)
    assert repr(planted) in str(info.value) and reason in str(info.value)
    assert not (tmp_path / "deep").exists()  # refused before anything was written
    assert not list(tmp_path.rglob("escaped.txt"))


def test_pull_never_writes_through_a_symlink_that_leaves_the_destination(moto: Server, tmp_path: Path) -> None:
    bucket = moto.new_bucket()
    moto.s3().put_object(Bucket=bucket, Key="data/link/file.txt", Body=b"data")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)

    with pytest.raises(SyncError, match="link exists in .* as a symlink"):
        engine(moto, "pull", dest, bucket)
    assert list(outside.iterdir()) == []

    # mirror replaces the link itself by a real directory; the target is untouched
    result = engine(moto, "pull", dest, bucket, mode="mirror")
    assert result["transferred"]["files"] == 1
    assert list(outside.iterdir()) == []
    assert not (dest / "link").is_symlink()
    assert (dest / "link" / "file.txt").read_bytes() == b"data"


def test_pull_replaces_a_file_symlink_without_following_it(moto: Server, tmp_path: Path) -> None:
    bucket = moto.new_bucket()
    moto.s3().put_object(Bucket=bucket, Key="data/f.txt", Body=b"from s3")
    victim = write(tmp_path / "victim.txt", b"must not change")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f.txt").symlink_to(victim)
    engine(moto, "pull", dest, bucket)
    assert victim.read_bytes() == b"must not change"
    assert not (dest / "f.txt").is_symlink() and (dest / "f.txt").read_bytes() == b"from s3"


def test_push_follows_inner_symlinks_and_refuses_escaping_ones(moto: Server, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", ["real/file.txt"])
    (src / "alias.txt").symlink_to(src / "real" / "file.txt")
    (src / "alias-dir").symlink_to("real")
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket)
    stored = keys(moto, bucket, "data/")
    assert {"data/alias.txt", "data/alias-dir/file.txt", "data/real/file.txt"} <= set(stored)

    secret = write(tmp_path / "secret.txt", b"not for upload")
    (src / "leak").symlink_to(secret)
    with pytest.raises(SyncError, match=r"symlink .*leak points outside the source directory"):
        engine(moto, "push", src, bucket)
    assert "data/leak" not in keys(moto, bucket)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to switch user")
def test_push_names_an_unreadable_file(moto: Server) -> None:
    """Run as 'nobody' (root reads everything) with the system python; the
    file it cannot read is named before anything is uploaded."""
    # Everything nobody touches, the engine included, is copied under /tmp: the checkout (and
    # $TMPDIR) may sit in a directory other users cannot enter.
    base = Path(tempfile.mkdtemp(prefix="s3sync-nobody-", dir="/tmp"))
    try:
        base.chmod(0o755)
        engine_copy = base / "engine"
        shutil.copytree(ROOT / "module_utils" / "reefguide", engine_copy / "module_utils" / "reefguide")
        (engine_copy / "scripts").mkdir()
        shutil.copy2(ENGINE, engine_copy / "scripts" / ENGINE.name)
        for d in [engine_copy, *engine_copy.rglob("*")]:
            d.chmod(0o755 if d.is_dir() else 0o644)
        src = make_tree(base / "src", ["ok.txt", "locked.txt"])
        (src / "locked.txt").chmod(0o000)
        cache = base / "cache"
        cache.mkdir(mode=0o777)
        cache.chmod(0o777)
        bucket = moto.new_bucket()
        script = engine_copy / "scripts" / ENGINE.name
        argv = ["runuser", "-u", "nobody", "--", "/usr/bin/python3", str(script), "push", str(src),
                "s3://%s/data" % bucket, "--endpoint-url", moto.endpoint]  # fmt: skip
        env = dict(os.environ, **CREDS, HOME=str(base), XDG_CACHE_HOME=str(cache))
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert proc.returncode == 1, proc.stderr
        assert "cannot read %s: permission denied" % (src / "locked.txt") in proc.stderr
        assert keys(moto, bucket) == {}
    finally:
        shutil.rmtree(base)


# --------------------------------------------------------------------------
# large files, verification, interruption


def test_large_files_use_multipart_and_still_verify(moto: Server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    big = write(src / "big.bin", os.urandom(12 * MiB + 123))
    write(src / "small.bin", b"s")
    bucket = moto.new_bucket()
    pushed = engine(moto, "push", src, bucket, part_size=5 * MiB, concurrency=4)
    assert pushed["multipart_files"] == 1
    assert pushed["requests"]["UploadPart"] == 3
    head = moto.s3().head_object(Bucket=bucket, Key="data/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # S3 stored it as a 3-part upload
    assert head["Metadata"]["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()

    dest = tmp_path / "dest"
    pulled = engine(moto, "pull", dest, bucket, part_size=5 * MiB, concurrency=4)
    assert pulled["multipart_files"] == 1
    assert pulled["requests"]["GetObject"] == 1 + 3 + 1  # manifest, three ranges, small.bin
    assert snapshot(dest) == snapshot(src)


@pytest.mark.parametrize("size", [100, 11 * MiB])
def test_pull_rejects_content_that_does_not_match_its_sha256(moto: Server, tmp_path: Path, size: int) -> None:
    """A manifest entry (same size and ETag) with another SHA-256: the data
    fails verification and never appears under its final name."""
    src = tmp_path / "src"
    write(src / "f.bin", os.urandom(size))
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket, part_size=5 * MiB)
    s3 = moto.s3()
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="data/" + MANIFEST_NAME)["Body"].read())
    manifest["files"]["f.bin"]["sha256"] = "0" * 64
    s3.put_object(Bucket=bucket, Key="data/" + MANIFEST_NAME, Body=json.dumps(manifest).encode())
    dest = tmp_path / "dest"
    with pytest.raises(Exception, match="ChecksumMismatch"):
        engine(moto, "pull", dest, bucket, part_size=5 * MiB, max_attempts=2)
    assert snapshot(dest) == {}


@contextlib.contextmanager
def held(server: Server, match: str, seconds: float, log: Path) -> Iterator[str]:
    """The lab's S3 proxy (lab/reefguide_lab/faults.py) in front of server, holding each request that
    matches `match` for `seconds`, as a slow link would; yields its endpoint."""
    port = _free_port()
    proc = _start([sys.executable, "-m", "reefguide_lab.faults", "--port", str(port),
                   "--upstream-port", server.endpoint.rsplit(":", 1)[1]], port, log,
                  env=dict(os.environ, PYTHONPATH=str(ROOT / "lab")))
    try:
        setting = json.dumps({"latency_seconds": seconds, "match": match}).encode()
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%d/lab/faults" % port, data=setting,
                                                      method="POST"), timeout=10).close()
        yield "http://127.0.0.1:%d" % port
    finally:
        _stop(proc)


def test_interrupted_pull_leaves_no_partial_file_and_rerun_completes(
    moto: Server, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    src = tmp_path / "src"
    smalls = ["small%d.txt" % i for i in range(5)]
    for i, name in enumerate(smalls):
        write(src / name, b"small %d" % i)
    write(src / "big.bin", os.urandom(160 * MiB))
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket, part_size=16 * MiB)

    dest = tmp_path / "dest"
    # each of big.bin's 32 part reads held 1 s, at 2 at a time: big.bin stays in its temporary for
    # 16 s however busy the machine. The small files are usually done by then, but not always: on a
    # loaded machine big.bin's parts can be queued before them (s9e), so the test does not wait for them
    with held(moto, r"^GET /%s/data/big\.bin$" % bucket, 1.0, tmp_path / "proxy.log") as endpoint:
        argv = [sys.executable, str(ENGINE), "pull", str(dest), "s3://%s/data" % bucket, "--endpoint-url", endpoint,
                "--part-size", "5MiB", "--concurrency", "2"]  # fmt: skip
        proc = subprocess.Popen(argv, env=dict(os.environ, **aws_env), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            def under_way() -> bool:  # big.bin begun in its temporary, and its first parts written
                for n in os.listdir(dest) if dest.is_dir() else []:
                    try:
                        if n.startswith(".big.bin.reefguide-tmp-") and (dest / n).stat().st_blocks > 0:
                            return True
                    except FileNotFoundError:  # renamed in between: then the pull is about to end
                        pass
                return False

            while proc.poll() is None and not under_way():
                time.sleep(0.01)
            assert proc.poll() is None, "the pull finished before it could be interrupted"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    names = os.listdir(dest)
    assert "big.bin" not in names  # never visible under its final name while partial
    temporaries = [n for n in names if TMP_RE.match(n)]
    assert len(temporaries) == 1 and temporaries[0].startswith(".big.bin.reefguide-tmp-")
    done = sorted(set(names) - set(temporaries))
    assert set(done) <= set(smalls)
    assert all((dest / n).read_bytes() == (src / n).read_bytes() for n in done)  # whole, or not there

    rerun = engine(moto, "pull", dest, bucket)
    assert rerun["transferred"]["files"] == 1 + len(smalls) - len(done), (done, rerun["transferred"])
    assert rerun["plan"]["download"]["first"][0] == "big.bin"
    assert rerun["temporaries_removed"] == 1
    assert snapshot(dest) == snapshot(src)


def test_progress_file_reports_the_finished_run(moto: Server, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", ["a", "b", "c"])
    bucket = moto.new_bucket()
    progress = tmp_path / "p.json"
    result = engine(moto, "push", src, bucket, progress_file=str(progress))
    state = json.loads(progress.read_text())
    assert state["phase"] == "done"
    assert state["files_done"] == state["files_total"] == result["transferred"]["files"] == 4
    assert state["bytes_done"] == state["bytes_total"] == result["transferred"]["bytes"]


# --------------------------------------------------------------------------
# the instance's python (Debian python3-boto3 1.26 plays Amazon Linux's)


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no system python")
def test_pull_runs_under_the_instance_python_with_old_boto3(
    moto: Server, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    version = subprocess.run(
        ["/usr/bin/python3", "-c", "import boto3; print(boto3.__version__)"], capture_output=True, text=True
    )
    if version.returncode != 0:
        pytest.skip("boto3 is not installed for /usr/bin/python3")
    src = make_tree(tmp_path / "src", NASTY)
    write(src / "big.bin", os.urandom(11 * MiB))
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket, part_size=5 * MiB)
    dest = tmp_path / "dest"
    args = {"direction": "pull", "bucket": bucket, "prefix": "data", "path": str(dest), "part_size": "5MiB"}
    env = module_env(moto, aws_env)
    pulled = run_module("s3_sync", args, env=env, python="/usr/bin/python3")
    assert pulled.get("failed") is not True, pulled.get("msg")
    assert pulled["transferred"]["files"] == len(NASTY) + 2 and pulled["multipart_files"] == 1
    assert snapshot(dest) == snapshot(src)
    again = run_module("s3_sync", args, env=env, python="/usr/bin/python3")
    assert again["changed"] is False


# --------------------------------------------------------------------------
# errors


def test_push_of_a_missing_path_fails_naming_it(moto: Server, tmp_path: Path, aws_env: dict[str, str]) -> None:
    bucket = moto.new_bucket()
    result = run_module(
        "s3_sync",
        {"direction": "push", "bucket": bucket, "path": str(tmp_path / "nope")},
        env=module_env(moto, aws_env),
    )
    assert result["failed"] is True
    assert "local path %s does not exist" % (tmp_path / "nope") in result["msg"]


def test_missing_bucket_says_to_check_stack_and_region(moto: Server, tmp_path: Path, aws_env: dict[str, str]) -> None:
    result = run_module(
        "s3_sync",
        {"direction": "pull", "bucket": "no-such-bucket-here", "prefix": "x", "path": str(tmp_path / "d")},
        env=module_env(moto, aws_env),
    )
    assert result["failed"] is True
    assert result["error_code"] == "NoSuchBucket"
    assert "check the stack name and region" in result["msg"]
    assert not (tmp_path / "d").exists()


class _DenyAll(http.server.BaseHTTPRequestHandler):
    """An S3 that answers every request with AccessDenied."""

    def _deny(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self._denied()

    def _denied(self) -> None:
        """The AccessDenied reply, the request body already read."""
        body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("content-type", "application/xml")
        self.send_header("content-length", str(0 if self.command == "HEAD" else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _deny

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def deny_all() -> Iterator[Server]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DenyAll)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server("deny", "http://127.0.0.1:%d" % server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def fetch(handler: http.server.BaseHTTPRequestHandler, target: str,
          body: Optional[bytes]) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer of target to the request handler holds (its body already read)."""
    conn = http.client.HTTPConnection(target, timeout=60)
    conn.request(handler.command, handler.path, body=body, headers=dict(handler.headers))
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheaders(), data


def answer_head(handler: http.server.BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]],
                length: int) -> None:
    """The status line and headers of an answer fetched from elsewhere, for a body of length bytes."""
    handler.send_response(status)
    for name, value in headers:
        if name.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
            handler.send_header(name, value)
    handler.send_header("content-length", str(length))
    handler.end_headers()


def relay(handler: http.server.BaseHTTPRequestHandler, target: str, body: Optional[bytes]) -> None:
    """Forwards the request handler holds (its body already read) to target, and the answer back."""
    status, headers, data = fetch(handler, target, body)
    answer_head(handler, status, headers, len(data))
    if handler.command != "HEAD":
        handler.wfile.write(data)


class _Relay(http.server.BaseHTTPRequestHandler):
    """Forwards each request to a real endpoint (target), unless intercept() answers it."""

    target = ""

    def intercept(self, body: Optional[bytes]) -> bool:
        return False

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        if not self.intercept(body):
            relay(self, self.target, body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


class _FaultProxy(_Relay):
    """Requests `fail` picks get AccessDenied (not retried), deterministically."""

    fail: Callable[[str, str, Any], bool] = staticmethod(lambda method, path, headers: False)

    def intercept(self, body: Optional[bytes]) -> bool:
        if not self.fail(self.command, self.path, self.headers):
            return False
        _DenyAll._denied(self)  # type: ignore[arg-type]  # the body was read
        return True


@pytest.fixture
def moto_proxies(moto: Server) -> Iterator[Callable[..., Server]]:
    """start(handler class, name, **its attributes): a loopback proxy in front of moto, shut down after the test."""
    servers = []

    def start(base: type, name: str, **attrs: Any) -> Server:
        handler = type(name, (base,), dict(attrs, target=moto.endpoint[len("http://"):]))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Server(name, "http://127.0.0.1:%d" % server.server_address[1])

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def fault_proxy(moto_proxies: Callable[..., Server]) -> Callable[[Callable[[str, str, Any], bool]], Server]:
    return lambda fail: moto_proxies(_FaultProxy, "proxy", fail=staticmethod(fail))


class _ErrorIn200(_Relay):
    """The first `times` requests `pick` matches get a 200 whose body is what `answer` makes of the
    request body (S3's errors inside a 200), unforwarded."""

    times = 1
    pick: Callable[[str, str], bool] = staticmethod(lambda method, path: False)
    answer: Callable[[bytes], bytes] = staticmethod(lambda body: b"")

    def intercept(self, body: Optional[bytes]) -> bool:
        cls = type(self)
        if not (cls.times and self.pick(self.command, self.path)):
            return False
        cls.times -= 1
        data = self.answer(body or b"")
        answer_head(self, 200, [("content-type", "application/xml")], len(data))
        self.wfile.write(data)
        return True


@pytest.fixture
def error_in_200(moto_proxies: Callable[..., Server]) -> Callable[..., Server]:
    return lambda pick, answer, times=1: moto_proxies(_ErrorIn200, "error-in-200", times=times,
                                                      pick=staticmethod(pick), answer=staticmethod(answer))


def per_key_errors(code: str) -> Callable[[bytes], bytes]:
    """A DeleteObjects answer that fails every key of the request with code."""
    def answer(body: bytes) -> bytes:
        import xml.etree.ElementTree as ET
        names = [el.text or "" for el in ET.fromstring(body).iter() if el.tag.endswith("Key")]
        return ("<DeleteResult>%s</DeleteResult>" % "".join(
            "<Error><Key>%s</Key><Code>%s</Code><Message>per-key %s</Message></Error>" % (n, code, code)
            for n in names)).encode()
    return answer


def test_errors_s3_reports_inside_a_200_are_retried_when_transient(
        moto: Server, error_in_200: Callable[..., Server], tmp_path: Path) -> None:
    """CompleteMultipartUpload and DeleteObjects can fail inside a 200 (issue 12): an InternalError
    there is retried like a 500 (before: the upload was aborted and the push failed; the keys were
    never sent again); a per-key AccessDenied still fails, naming the key."""
    src = tmp_path / "src"
    write(src / "big.bin", os.urandom(6 * MiB))
    for i in range(4):
        write(src / ("s%d" % i), b"small %d" % i)
    bucket = moto.new_bucket()
    complete = error_in_200(lambda method, path: method == "POST" and "uploadId=" in path,
                            lambda body: b"<Error><Code>InternalError</Code><Message>We encountered an internal "
                                         b"error. Please try again.</Message></Error>")
    engine(complete, "push", src, bucket, part_size=5 * MiB)
    assert moto.s3().head_object(Bucket=bucket, Key="data/big.bin")["ContentLength"] == 6 * MiB
    assert moto.s3().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    for i in range(2):
        (src / ("s%d" % i)).unlink()
    delete = error_in_200(lambda method, path: method == "POST" and "delete" in path, per_key_errors("InternalError"))
    engine(delete, "push", src, bucket, mode="mirror")
    assert "data/s0" not in keys(moto, bucket) and "data/s1" not in keys(moto, bucket)

    (src / "s2").unlink()
    denied = error_in_200(lambda method, path: method == "POST" and "delete" in path, per_key_errors("AccessDenied"))
    with pytest.raises(Exception, match=r"AccessDenied.*s3://%s/data/s2" % bucket):
        engine(denied, "push", src, bucket, mode="mirror")


def test_a_failed_part_aborts_the_upload_and_removes_the_temporary(
    moto: Server, fault_proxy: Callable[..., Server], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "big.bin", os.urandom(16 * MiB))
    for i in range(10):
        write(src / ("s%d" % i), b"small")
    bucket = moto.new_bucket()

    proxy = fault_proxy(lambda method, path, headers: method == "PUT" and "partNumber=3" in path)
    with pytest.raises(Exception, match="AccessDenied"):
        engine(proxy, "push", src, bucket, part_size=5 * MiB, concurrency=3)
    assert "data/big.bin" not in keys(moto, bucket)
    assert moto.s3().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted

    engine(moto, "push", src, bucket, part_size=5 * MiB)
    dest = tmp_path / "dest"
    proxy = fault_proxy(lambda method, path, headers: (headers.get("range") or "").startswith("bytes=10485760-"))
    with pytest.raises(Exception, match="AccessDenied"):
        engine(proxy, "pull", dest, bucket, part_size=5 * MiB, concurrency=3)
    assert not [p for p in dest.iterdir() if TMP_RE.match(p.name)]  # no temporary left behind
    assert not (dest / "big.bin").exists()
    assert engine(moto, "pull", dest, bucket)["plan"]["download"]["first"][0] == "big.bin"
    assert snapshot(dest) == snapshot(src)


def test_access_denied_names_the_permission_problem(deny_all: Server, tmp_path: Path) -> None:
    from ansible.module_utils.reefguide.aws import describe_error

    src = make_tree(tmp_path / "src", ["a"])
    with pytest.raises(Exception) as info:
        engine(deny_all, "push", src, "transfer-bucket")
    message = describe_error(info.value, "push")
    assert "AccessDenied" in message and "lack this permission" in message


def test_invalid_settings_are_refused_before_any_request(tmp_path: Path) -> None:
    for kwargs, text in (
        ({"part_size": MiB}, "at least 5 MiB"),
        ({"part_size": 5 * 1024 * MiB + 1}, "at most 5 GiB"),
        ({"prefix": "a/../b"}, "contains '..'"),
        ({"concurrency": 0}, "between 1 and 256"),
    ):
        with pytest.raises(Exception, match=text):
            Sync(SyncOptions(direction="push", bucket="b", path=str(tmp_path), **kwargs))


# --------------------------------------------------------------------------
# the signer


def test_signature_matches_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our SigV4 headers are identical to botocore's for the same request
    (moto does not check signatures; rclone, above, does)."""
    import datetime

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")
    client = S3Client("my-bucket", creds, "ap-southeast-2", "http://127.0.0.1:9000")
    key = "dir/ünï $(x) 'q'+plus~.txt"
    query = "partNumber=2&uploadId=a%2Fb"
    ours = {"x-amz-meta-sha256": "ab" * 32}
    client.sign("PUT", client.path_for(key), query, ours, "UNSIGNED-PAYLOAD", now=1700000000.0)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(2023, 11, 14, 22, 13, 20))
    url = "http://127.0.0.1:9000" + client.path_for(key) + "?" + query
    request = AWSRequest(method="PUT", url=url, headers={"x-amz-meta-sha256": "ab" * 32})
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    botocore.auth.S3SigV4Auth(creds, "s3", "ap-southeast-2").add_auth(request)
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"] == "20231114T221320Z"
    assert ours["authorization"] == request.headers["Authorization"]
