"""Runs with archives do not share anything on the controller: each unpacks into a private
directory of its own (mode 0700) that is gone when the run ends, whether it staged, only
checked (--check) or failed. Against the lab."""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from helpers import ROOT, playbook_command, run_playbook, tree
from lab import Lab

INVENTORY = ROOT / "inventory" / "lab.yml"
PATTERN = "reefguide-efs-unpack*"


def make_tgz(path: Path, files: dict[str, bytes]) -> Path:
    src = path.with_suffix(".d")
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    with tarfile.open(path, "w:gz") as tf:
        for rel in files:
            tf.add(str(src / rel), arcname=rel)
    return path


def leftovers(tmpdir: Path, names: set[str]) -> list[str]:
    """Unpack directories left in the run's TMPDIR (any), or in /tmp holding one of names."""
    found = [str(p) for p in tmpdir.glob(PATTERN)]
    for p in Path("/tmp").glob(PATTERN):
        if p.is_dir() and names & {os.path.basename(f) for f in tree(p)}:
            found.append(str(p))
    return found


def test_a_check_run_of_another_archive_cannot_change_what_a_run_stages(lab: Lab, tmp_path: Path) -> None:
    """Run A stages a.tar.gz; after A has unpacked it, and before it uploads, A is paused (SIGSTOP)
    and a --check run B of b.tar.gz to another destination runs to its end; then A goes on.
    Before the fix both unpacked into $TMPDIR/reefguide-efs-unpack-<host>: A staged b's files."""
    token = "%d-%d" % (os.getpid(), time.time_ns())
    a_files = {"a-%s.txt" % token: b"archive a\n", "sub/a.csv": b"1,2\n"}
    b_files = {"b-%s.txt" % token: b"archive b\n", "sub/b.csv": b"3,4\n"}
    a = make_tgz(tmp_path / "a.tar.gz", a_files)
    b = make_tgz(tmp_path / "b.tar.gz", b_files)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}
    names = {os.path.basename(rel) for rel in (*a_files, *b_files)}

    argv, full = playbook_command(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % a,
                                  "-e", "dest=data/reefguide/race", env=env)
    log = (tmp_path / "a.log").open("w+")
    run_a = subprocess.Popen(argv, cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while not any(tree(p) == a_files for p in tmpdir.glob(PATTERN)):
            assert run_a.poll() is None, "run A ended before it unpacked: " + Path(log.name).read_text()[-3000:]
            assert time.time() < deadline, "run A never unpacked a.tar.gz"
            time.sleep(0.05)
        os.killpg(run_a.pid, signal.SIGSTOP)
        try:
            run_b = run_playbook(lab.env, INVENTORY, "stage_data.yml", "--check", "-e", "src=%s" % b,
                                 "-e", "dest=data/reefguide/other", env=env)
        finally:
            os.killpg(run_a.pid, signal.SIGCONT)
        assert run_b.returncode == 0, run_b.stdout[-3000:] + run_b.stderr[-2000:]
        assert run_a.wait(timeout=600) == 0, Path(log.name).read_text()[-4000:]
    finally:
        if run_a.poll() is None:
            os.killpg(run_a.pid, signal.SIGKILL)
            run_a.wait()
        log.close()

    assert tree(lab.efs_path / "data/reefguide/race") == a_files
    assert not (lab.efs_path / "data/reefguide/other").exists()
    assert leftovers(tmpdir, names) == []


def test_a_failed_run_leaves_no_unpacked_archive(lab: Lab, tmp_path: Path) -> None:
    """The run fails after the archive was unpacked (the stack does not exist)."""
    files = {"f-%d-%d.txt" % (os.getpid(), time.time_ns()): b"x"}
    src = make_tgz(tmp_path / "f.tar.gz", files)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    before = lab.sessions_started()
    run = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=data/reefguide/f",
                       "-e", "reefguide_stack_name=no-such-stack", env={"TMPDIR": str(tmpdir)})
    assert run.returncode != 0 and "no-such-stack" in run.stdout, run.stdout[-3000:]
    assert lab.sessions_started() == before
    assert leftovers(tmpdir, set(files)) == []
