"""The lab's count of EFS reads (lab/reefguide_lab/efs_reads.py): what the other tests and the
benchmark rely on to say "a stage read only what changed". A read through the instance's EFS
mount counts the file's size; metadata work, writes and the host's own reads count nothing."""

from __future__ import annotations

import os
from pathlib import Path

from lab import Lab

MiB = 1024 * 1024
EFS = "/home/ec2-user/efs"


def mounted(lab: Lab) -> None:
    lab.start_instance()
    if lab.instance_exec(["findmnt", EFS]).returncode != 0:
        lab.instance_exec(["sh", "/home/ec2-user/mountefs.sh"], check=True)


def make_files(lab: Lab, name: str, sizes: dict[str, int]) -> Path:
    """Files written on the host, straight into the lab's storage."""
    where = lab.efs_path / "data" / "reefguide" / name
    where.mkdir(parents=True, exist_ok=True)
    for file, size in sizes.items():
        (where / file).write_bytes(os.urandom(size))
    return where


def inside(lab: Lab, script: str) -> None:
    res = lab.instance_exec(["sh", "-c", script])
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_read_counts_its_size_and_a_listing_counts_nothing(lab: Lab) -> None:
    mounted(lab)
    here = make_files(lab, "reads-basic", {"one.bin": MiB, "two.bin": MiB, "small.txt": 10})
    rel = "%s/data/reefguide/reads-basic/" % lab.fs_id
    lab.efs_reads(reset=True)

    # metadata only: listings, stat, find, du, a hard link, a rename, a chmod
    inside(lab, "cd %s/data/reefguide/reads-basic && ls -lR .. >/dev/null && stat one.bin two.bin >/dev/null"
                " && find . -type f -size +1k >/dev/null && du -s . >/dev/null && ln one.bin linked.bin"
                " && mv small.txt renamed.txt && chmod 600 two.bin" % EFS)
    # the host's own reads (tests comparing bytes) are not EFS reads
    assert (here / "one.bin").read_bytes() and (here / "two.bin").read_bytes()
    reads = lab.efs_reads()
    assert (reads["bytes"], reads["files"]) == (0, 0), reads

    inside(lab, "cat %s/data/reefguide/reads-basic/one.bin >/dev/null" % EFS)
    reads = lab.efs_reads(reset=True)
    assert reads["bytes"] == MiB and reads["files"] == 1, reads
    # one inode, two names: the name shown is either, the count is once
    assert set(reads["read"]) <= {rel + "one.bin", rel + "linked.bin"} and len(reads["read"]) == 1, reads

    # read twice, and through its other name: still the file's size once
    inside(lab, "cd %s/data/reefguide/reads-basic && cat two.bin >/dev/null && cat linked.bin two.bin >/dev/null"
           % EFS)
    reads = lab.efs_reads(reset=True)
    assert reads["bytes"] == 2 * MiB and reads["files"] == 2, reads


def test_a_file_written_in_the_instance_counts_only_once_read(lab: Lab) -> None:
    mounted(lab)
    make_files(lab, "reads-new", {})
    lab.efs_reads(reset=True)
    d = "%s/data/reefguide/reads-new" % EFS
    # written (and its times set, as the pull does) but not read: nothing
    inside(lab, "head -c %d /dev/urandom > %s/new.bin && touch -m -d 2020-01-01 %s/new.bin"
                " && mv %s/new.bin %s/final.bin" % (MiB, d, d, d, d))
    assert lab.efs_reads()["bytes"] == 0
    # the accounting tells a read of a new file by its atime passing its ctime by more than a clock
    # tick: the read must come later than that
    inside(lab, "sleep 0.1; cat %s/final.bin >/dev/null" % d)
    reads = lab.efs_reads(reset=True)
    assert reads["bytes"] == MiB and list(reads["read"]) == ["%s/data/reefguide/reads-new/final.bin" % lab.fs_id]


def test_reads_are_counted_per_ssm_session(lab: Lab, tmp_path: Path) -> None:
    mounted(lab)
    make_files(lab, "reads-session", {"a.bin": MiB, "b.bin": 3 * MiB})
    inv = lab.inventory(tmp_path / "inv.json")
    lab.efs_reads(reset=True)
    res = lab.ansible(inv, "command", "sha256sum %s/data/reefguide/reads-session/b.bin" % EFS, become=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # a read between sessions is the total's, no session's
    inside(lab, "cat %s/data/reefguide/reads-session/a.bin >/dev/null" % EFS)
    reads = lab.efs_reads()
    session = reads["last_session"]
    assert session["ended"] is not None, reads
    assert (session["bytes"], session["files"]) == (3 * MiB, 1), session
    assert (reads["bytes"], reads["files"]) == (4 * MiB, 2), reads
    status = lab.status()["efs_reads"]
    assert status["bytes"] == 4 * MiB and status["last_session"]["bytes"] == 3 * MiB, status
