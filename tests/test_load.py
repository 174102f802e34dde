"""Load: 50,000 small files stage and re-stage through the playbook in the
lab; the engine's memory grows with the file count only by its index (a few
KB per file) and not at all with a 5 GiB file (peak RSS from wait4(),
bounded by concurrency x buffer, not by data).

The memory figures are a ceiling the design promises (docs/architecture.md,
"S3 engine": part size x concurrency), not a speed measurement; speed is
bench/'s business."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, run_playbook
from lab import Lab

sys.path.insert(0, str(ROOT / "bench"))
from endpoint import S3Server  # noqa: E402
from peers import base_env  # noqa: E402

ENGINE = ROOT / "scripts" / "reefguide-sync"
MiB = 1024 * 1024
RSS_CEILING_MB = 200  # issue 5's bound while moving 256 MiB files; holds for 5 GiB too


def small_files(root: Path, count: int) -> Path:
    """count files of ~60 bytes in folders of 100."""
    for i in range(count):
        d = root / ("d%03d" % (i // 100 % 1000)) / ("e%02d" % (i // 100000))
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / ("f%06d.csv" % i)).write_bytes(b"id,value\n%d,%s\n" % (i, hashlib.sha1(b"%d" % i).hexdigest().encode()))
    return root


def digest_tree(root: Path) -> tuple[int, str]:
    """(file count, one SHA-256 over every relative path and content, in order)."""
    h = hashlib.sha256()
    n = 0
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
            n += 1
    return n, h.hexdigest()


def test_50k_files_stage_and_restage_through_the_playbook(lab: Lab, tmp_path: Path) -> None:
    lab.stop_instance()  # other tests may leave it running; this one checks the stage stops it
    src = small_files(tmp_path / "src", 50000)
    dest = "data/reefguide/load50k"
    inv = ROOT / "inventory" / "lab.yml"
    run = run_playbook(lab.env, inv, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % dest, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:]
    assert digest_tree(lab.efs_path / dest) == digest_tree(src)
    sessions = lab.sessions_started()
    again = run_playbook(lab.env, inv, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % dest, timeout=1800)
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout[-3000:]
    assert lab.sessions_started() == sessions
    # one file changed: staged again, and only that file differs from before
    (src / "d007" / "e00" / "f000700.csv").write_bytes(b"changed\n")
    third = run_playbook(lab.env, inv, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % dest, timeout=1800)
    assert third.returncode == 0 and "1 changed" in third.stdout, third.stdout[-3000:]
    assert digest_tree(lab.efs_path / dest) == digest_tree(src)
    assert lab.status()["instances"][lab.instance_id]["ec2_state"] == "stopped"


def engine_rss(env: dict[str, str], *args: str) -> int:
    """Peak RSS (MB) of one engine run, as wait4() reports it."""
    proc = subprocess.Popen([sys.executable, str(ENGINE), *args, "--summary"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert os.waitstatus_to_exitcode(status) == 0, (out + err).decode()[-2000:]
    return usage.ru_maxrss // 1024


@pytest.fixture
def s3(tmp_path: Path):
    with S3Server(tmp_path / "s3", tmp_path / "rclone.log") as ep:
        env = base_env(ep, tmp_path)
        yield ep, env


def test_memory_does_not_grow_with_the_file_count(s3, tmp_path: Path) -> None:
    ep, env = s3
    peaks = {}
    for count in (5000, 50000):
        src = small_files(tmp_path / ("src%d" % count), count)
        url = "s3://%s/n%d" % (ep.bucket, count)
        push = engine_rss(env, "push", str(src), url, "--endpoint-url", ep.url)
        dst = tmp_path / ("dst%d" % count)
        pull = engine_rss(env, "pull", str(dst), url, "--endpoint-url", ep.url)
        assert digest_tree(dst) == digest_tree(src)
        peaks[count] = max(push, pull)
    per_file_kb = (peaks[50000] - peaks[5000]) * 1024 / 45000
    print("peak RSS, MB: %s; %.1f KB more per file" % (peaks, per_file_kb))
    # What grows is the index (name, size, digest, ETag per file on both sides: ~2.5 KB of
    # Python objects each), never the contents: 64 KB files would cost the same.
    assert per_file_kb < 4, peaks


def test_a_5_gib_file_streams_with_bounded_memory(s3, tmp_path: Path) -> None:
    ep, env = s3
    src = tmp_path / "big"
    src.mkdir()
    block = os.urandom(MiB)
    with open(src / "huge.nc", "wb") as fh:  # 5 GiB, every MiB distinct (a counter up front)
        for i in range(5 * 1024):
            fh.write(i.to_bytes(8, "big") + block[8:])
    url = "s3://%s/huge" % ep.bucket
    push = engine_rss(env, "push", str(src), url, "--endpoint-url", ep.url)
    dst = tmp_path / "back"
    pull = engine_rss(env, "pull", str(dst), url, "--endpoint-url", ep.url)
    print("peak RSS, MB: push %d, pull %d" % (push, pull))
    assert (dst / "huge.nc").stat().st_size == 5 * 1024 * MiB
    assert digest_tree(dst) == digest_tree(src)
    assert push < RSS_CEILING_MB and pull < RSS_CEILING_MB
