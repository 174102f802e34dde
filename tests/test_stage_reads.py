"""A stage reads from EFS only what changed (issue 9): unchanged files are known by the pull's
checksum cache, kept on EFS and keyed so that the staging copy's hard links do not invalidate it.
Counted by the lab (lab/reefguide_lab/efs_reads.py: bytes of the files read through the
instance's EFS mount)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ansible.module_utils.reefguide.layout import RELEASES_DIR, target_key

from helpers import ROOT, run_playbook, tree
from lab import Lab
from live_records import NOTHING, live_records

FILE = 256 * 1024
INVENTORY = ROOT / "inventory" / "lab.yml"


def make_src(root: Path, count: int) -> list[str]:
    """count files of one size (a size match is what made the old pull hash them), in two directories."""
    names = ["%s/layer-%02d.tif" % ("a" if i % 2 else "b", i) for i in range(count)]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(os.urandom(FILE))
    return names


def stage(lab: Lab, src: Path, dest: str) -> str:
    run = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % dest)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert tree(lab.efs_path / dest) == tree(src), "EFS:%s differs from the source" % dest
    return run.stdout


def releases_of(lab: Lab, dest: str) -> list[Path]:
    """The kept releases of dest on EFS."""
    return [p for p in (lab.efs_path / RELEASES_DIR / target_key(dest)).iterdir() if p.is_dir()]


def data_reads(reads: dict, names: list[str]) -> dict[str, int]:
    """The files of names among those the lab saw read (by any of their hard-linked names)."""
    basenames = {n.rsplit("/", 1)[-1] for n in names}
    return {p: size for p, size in reads["read"].items() if p.rsplit("/", 1)[-1] in basenames}


def test_restaging_one_changed_file_reads_no_unchanged_file_from_efs(lab: Lab, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", "data/reefguide/reads-restage"
    names = make_src(src, 12)
    stage(lab, src, dest)
    # the instance is replaced (a redeploy): nothing of the cache may live on its disk
    shutil.rmtree(lab.dir / "instances" / lab.instance_id / "root" / ".cache", ignore_errors=True)

    # one file changes, keeping its size and even its mtime (a new archive with the same member times)
    changed = src / names[3]
    st = changed.stat()
    changed.write_bytes(os.urandom(FILE))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    lab.efs_reads(reset=True)
    sessions = lab.sessions_started()
    out = stage(lab, src, dest)

    reads = lab.efs_reads()
    assert lab.sessions_started() - sessions == 1
    assert data_reads(reads, names[:3] + names[4:]) == {}, reads["read"]
    # at most the changed file and metadata (the checksum cache, the release history)
    assert reads["bytes"] <= FILE + 64 * 1024, reads["read"]
    assert "Read from EFS to compare: 0 files hashed (0 bytes)" in out, out[-3000:]


def test_a_fresh_stage_reads_nothing_and_a_rollback_is_not_mistaken_for_unchanged(lab: Lab, tmp_path: Path) -> None:
    """After a rollback the files have the old inodes: the cache (of the newer version) must not
    answer for them, even when sizes and mtimes are equal. And the rollback, its dest given with a
    trailing slash (as a shell's completion writes it), drops the record of what was live: else the
    next stage of v2 would say "Nothing to do" and never reach the instance. A stage of v1 then (what
    EFS holds again) cuts no release: a cache answering for the old inodes would have sent two files."""
    v1, v2, dest = tmp_path / "v1", tmp_path / "v2", "data/reefguide/reads-rollback"
    names = make_src(v1, 4)
    lab.efs_reads(reset=True)
    stage(lab, v1, dest)
    assert lab.efs_reads(reset=True)["bytes"] <= 64 * 1024
    shutil.copytree(v1, v2)
    for name in names[:2]:
        st = (v2 / name).stat()
        (v2 / name).write_bytes(os.urandom(FILE))
        os.utime(v2 / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    stage(lab, v2, dest)
    roll = run_playbook(lab.env, INVENTORY, "rollback.yml", "-e", "dest=%s/" % dest)
    assert roll.returncode == 0, roll.stdout[-3000:]
    assert tree(lab.efs_path / dest) == tree(v1)
    assert dest not in live_records(lab)
    kept = sorted(p.name for p in releases_of(lab, dest))
    same = stage(lab, v1, dest)  # what EFS holds now: compared on the instance, no release cut
    assert "No new release: EFS already held this data at %s" % dest in same, same[-3000:]
    assert sorted(p.name for p in releases_of(lab, dest)) == kept and tree(lab.efs_path / dest) == tree(v1)
    assert dest in live_records(lab)  # and recorded again
    out = stage(lab, v2, dest)  # compares the rolled-back v1 files with v2's: must find the two changed
    assert NOTHING not in out, out[-3000:]
