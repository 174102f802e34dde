"""stage_data.yml interrupted: Ctrl-C of the controller during the upload and
during the remote part, the instance stopped under it, SSM never Online.
After each: live data untouched, nothing half-staged is live, and what is
left (lock, running instance, uploads, staging) is named by the next run and
cleaned by teardown.yml, after which a stage completes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from ansible.module_utils.reefguide.controller_watch import process_alive

from helpers import ROOT, VENV_BIN, ansible_env, run_playbook
from lab import Lab, running_lab
from live_records import digests, live_records

INVENTORY = ROOT / "inventory" / "lab.yml"
DEST = "data/reefguide/interrupted"


RUNS = "^(PUT|GET) /%s/reefguide-efs/runs/"  # the requests the slow link holds (the bucket's name filled in)
FILES = 150  # each transfer of them lasts seconds: every request to the runs' prefix has LATENCY
LATENCY = 0.4  # seconds, at the upload's and the pull's 16 requests at a time: about 4 s each way


@pytest.fixture(scope="module")
def ilab(tmp_path_factory):
    """A lab of this module's own: these tests leave locks and running instances behind on purpose.
    S3 goes through the fault proxy, which holds each transfer of a run's files LATENCY seconds
    (a slow link): a stage of a few hundred files lasts long enough to be interrupted mid-way."""
    with running_lab(tmp_path_factory.mktemp("ilab"), "--s3-faults", "0") as lab:
        slow_link(lab)
        yield lab


def slow_link(lab: Lab) -> None:
    lab.ctl("faults", "--rate", "0", "--latency-seconds", str(LATENCY), "--match", RUNS % re.escape(lab.bucket))


def let_go(lab: Lab) -> None:
    lab.release_held()
    slow_link(lab)


def make_src(root: Path, version: str, files: int = FILES) -> Path:
    """Small files, each a request to S3 on the way up and on the way down."""
    for i in range(files):
        d = root / ("region%02d" % (i % 15))
        d.mkdir(parents=True, exist_ok=True)
        (d / ("table%04d.csv" % i)).write_text(("%s,%d\n" % (version, i)) * 200)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def start_stage(lab: Lab, src: Path, dest: str = DEST) -> subprocess.Popen:
    env = ansible_env(lab.env)
    env["ANSIBLE_STDOUT_CALLBACK"] = "default"
    # its own process group, as a terminal's foreground job: Ctrl-C reaches all of it
    return subprocess.Popen([str(VENV_BIN / "ansible-playbook"), "-i", str(INVENTORY), "stage_data.yml",
                             "-e", "src=%s" % src, "-e", "dest=%s" % dest], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(what: str, cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, "the run ended before %s: %s" % (what, proc.communicate()[0][-3000:])
        assert time.time() < deadline, "no %s within %d s" % (what, timeout)
        time.sleep(0.1)


def stage_into_the_remote_part(lab: Lab, src: Path) -> subprocess.Popen:
    """A stage of src, returned 1.5 s into its SSM session (the pull under way)."""
    proc = start_stage(lab, src)
    wait_for("remote session", lambda: remote_part(lab), proc)
    time.sleep(1.5)
    return proc


def uploading(lab: Lab) -> bool:
    page = lab.client("s3").list_objects_v2(Bucket=lab.bucket, Prefix="reefguide-efs/runs/", MaxKeys=5)
    return page.get("KeyCount", 0) > 0


def remote_part(lab: Lab) -> bool:
    return lab.supervisor()["sessions_open"] > 0


def interrupt(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    return out


def run_keys(lab: Lab) -> list[str]:
    pages = lab.client("s3").get_paginator("list_objects_v2").paginate(Bucket=lab.bucket, Prefix="reefguide-efs/runs/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def staged_leftovers(lab: Lab) -> list[str]:
    staging = lab.efs_path / ".reefguide-staging"
    return [p.name for p in staging.iterdir()] if staging.is_dir() else []


def counts(out: str, what: str) -> tuple[int, int]:
    """(transferred, skipped) files from the summary's Upload / Pull line (the pull's skipped files are
    those reused from EFS)."""
    flat = re.sub(r"\s+", " ", out)  # the YAML callback folds a long line
    m = re.search(r"%s: (\d+) files / \d+ bytes transferred, (\d+) (?:skipped|files / \d+ bytes reused)" % what, flat)
    assert m, (what, out[-3000:])
    return int(m.group(1)), int(m.group(2))


def ec2_state(lab: Lab) -> str:
    return lab.supervisor()["instances"][lab.instance_id]["ec2_state"]


def stage_v1(lab: Lab, tmp_path: Path) -> Path:
    v1 = make_src(tmp_path / "v1", "v1", files=20)
    run = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % v1, "-e", "dest=%s" % DEST)
    assert run.returncode == 0, run.stdout[-3000:]
    return v1


def locked(lab: Lab) -> bool:
    return lab.client("s3").list_objects_v2(Bucket=lab.bucket, Prefix="reefguide-efs/lock.json").get("KeyCount", 0) > 0


def live_before(lab: Lab, tmp_path: Path) -> dict[str, bytes]:
    """What is live at DEST before the interrupted run: what the test before left there (each
    ends with a completed stage and the deployment unlocked), or else a version staged now."""
    live = lab.efs_path / DEST
    if live.is_dir() and not locked(lab):
        return tree(live)
    return tree(stage_v1(lab, tmp_path))


def new_version(tmp_path: Path) -> Path:
    """FILES files that differ from every earlier version in this lab (the version names the test)."""
    return make_src(tmp_path / "v2", "v2-%s" % tmp_path.name)


def teardown_then_restage(lab: Lab, src: Path) -> None:
    """What the operator does next: the stage names the held lock; teardown
    breaks it and cleans; then the stage completes."""
    refused = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % DEST)
    assert refused.returncode != 0 and "locked by" in refused.stdout and "break_lock=true" in refused.stdout, \
        refused.stdout[-3000:]
    tidy = run_playbook(lab.env, INVENTORY, "teardown.yml", "-e", "break_lock=true")
    assert tidy.returncode == 0, tidy.stdout[-3000:]
    assert run_keys(lab) == []
    assert staged_leftovers(lab) == []
    assert ec2_state(lab) == "stopped"
    again = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % DEST)
    assert again.returncode == 0, again.stdout[-3000:]
    assert tree(lab.efs_path / DEST) == tree(src)
    assert ec2_state(lab) == "stopped"


def test_ctrl_c_during_the_upload(ilab: Lab, tmp_path: Path) -> None:
    before = live_before(ilab, tmp_path)
    v2 = new_version(tmp_path)
    proc = start_stage(ilab, v2)
    wait_for("upload", lambda: uploading(ilab), proc)
    interrupt(proc)
    assert tree(ilab.efs_path / DEST) == before  # live data untouched
    teardown_then_restage(ilab, v2)


def descendants(pid: int) -> list[int]:
    """Every process below pid now (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path("/proc/%s/stat" % entry).read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_kill_9_of_the_controller_ends_the_upload_within_seconds(ilab: Lab, tmp_path: Path) -> None:
    """SIGKILL of ansible-playbook alone (not its group: what `kill -9 <pid>` does): its workers and the
    upload they run are in process groups of their own and used to carry on to the end. The upload
    watches the controller and stops; nothing of the run is left on the controller seconds later."""
    live_before(ilab, tmp_path)
    v2 = new_version(tmp_path)
    proc = start_stage(ilab, v2)
    wait_for("upload", lambda: uploading(ilab), proc)
    left = descendants(proc.pid)
    assert left, "the run has no worker"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # reaped, as a shell would
    deadline = time.time() + 20
    while [p for p in left if process_alive(p)]:
        assert time.time() < deadline, "still running 20 s after the controller's death: %s" % [
            Path("/proc/%d/cmdline" % p).read_bytes()[:200] for p in left if process_alive(p)]
        time.sleep(0.2)
    sent = len(run_keys(ilab))
    time.sleep(2)
    assert len(run_keys(ilab)) == sent < FILES  # nothing more arrives, and it stopped short
    tidy = run_playbook(ilab.env, INVENTORY, "teardown.yml", "-e", "break_lock=true")
    assert tidy.returncode == 0, tidy.stdout[-3000:]
    assert run_keys(ilab) == [] and ec2_state(ilab) == "stopped"


def test_ctrl_c_during_the_remote_part(ilab: Lab, tmp_path: Path) -> None:
    before = live_before(ilab, tmp_path)
    v2 = new_version(tmp_path)
    proc = stage_into_the_remote_part(ilab, v2)
    interrupt(proc)
    assert tree(ilab.efs_path / DEST) == before
    teardown_then_restage(ilab, v2)


def test_instance_stopped_during_the_remote_part(ilab: Lab, tmp_path: Path) -> None:
    before = live_before(ilab, tmp_path)
    v2 = new_version(tmp_path)
    proc = stage_into_the_remote_part(ilab, v2)
    ilab.stop_instance()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "Staging failed" in out and "stopped" in out, out[-4000:]
    assert tree(ilab.efs_path / DEST) == before
    # said so, and the record's pending mark is off again: an identical re-stage may say "Nothing to do"
    assert "Live data at %s untouched: the run failed before its release." % DEST in out, out[-4000:]
    assert "pending" not in live_records(ilab)[DEST]
    assert ec2_state(ilab) == "stopped"
    # the run released its lock and kept its uploads; a plain re-run completes without uploading again
    assert len(run_keys(ilab)) >= FILES and "Uploads kept at" in out
    assert ilab.s3_faults()["counters"]["delayed"] >= FILES  # the slow link was there
    again = run_playbook(ilab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % v2, "-e", "dest=%s" % DEST)
    assert again.returncode == 0, again.stdout[-3000:]
    assert counts(again.stdout, "Upload") == (0, FILES)
    assert tree(ilab.efs_path / DEST) == tree(v2)
    assert run_keys(ilab) == []  # gone once staged


def test_ctrl_c_right_after_the_release_leaves_no_record_that_lies(ilab: Lab, tmp_path: Path) -> None:
    """The run is stopped after its release went live on EFS and before it wrote the record (the next
    step's module held on its way to the instance, then Ctrl-C). The record stays marked pending:
    neither a check run nor a recovery stage of the old data says "Nothing to do" while EFS holds the
    new; the recovery stage puts the old data back, records it, and stops the instance that the
    interrupted run started (it was running when the recovery began)."""
    dest = DEST + "-release"
    v1 = make_src(tmp_path / "v1", "v1-%s" % tmp_path.name, files=20)
    v2 = make_src(tmp_path / "v2", "v2-%s" % tmp_path.name, files=20)
    first = run_playbook(ilab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % v1, "-e", "dest=%s" % dest)
    assert first.returncode == 0, first.stdout[-3000:]
    ilab.hold_next("AnsiballZ_efs_usage")  # the step after the release: EFS is measured
    try:
        proc = start_stage(ilab, v2, dest)
        wait_for("the step after the release, held", ilab.holding, proc, timeout=300)
        assert tree(ilab.efs_path / dest) == tree(v2)  # released
        interrupt(proc)
    finally:
        let_go(ilab)
    assert live_records(ilab)[dest].get("pending"), live_records(ilab)[dest]
    assert ec2_state(ilab) == "running"  # the interrupted run started it
    check = run_playbook(ilab.env, INVENTORY, "stage_data.yml", "--check", "-e", "src=%s" % v1, "-e", "dest=%s" % dest)
    assert check.returncode == 0 and "Nothing to do" not in check.stdout, check.stdout[-3000:]
    # the interrupted run left the instance running: the check run compares with what EFS holds (v2)
    out = " ".join(check.stdout.split())  # YAML output wraps long lines
    assert "Plan (compared on the instance with what EFS holds at %s): 0 new, 20 changed, 0 removed" % dest in out
    assert "; run %s was interrupted there before it recorded what it did" % record_pending_run(ilab, dest) in out
    again = run_playbook(ilab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % v1, "-e", "dest=%s" % dest,
                         "-e", "break_lock=true")
    assert again.returncode == 0 and "Nothing to do" not in again.stdout, again.stdout[-3000:]
    assert tree(ilab.efs_path / dest) == tree(v1)
    record = live_records(ilab)[dest]
    assert "pending" not in record
    assert {rel: (e["size"], e["sha256"]) for rel, e in record["files"].items()} == digests(v1)
    # the interrupted run started the instance and said so in its lock: the run that broke it stopped it
    assert ec2_state(ilab) == "stopped"


def record_pending_run(lab: Lab, dest: str) -> str:
    return live_records(lab)[dest]["pending"]


PULLED_FIRST = 50  # complete files in staging when the pull is killed


def test_pull_killed_on_the_instance(ilab: Lab, tmp_path: Path) -> None:
    """SIGKILL of the sync on the instance mid-pull: live data untouched, no partial file where
    workers read, and the re-run uploads nothing and pulls only what is missing."""
    before = live_before(ilab, tmp_path)
    v2 = new_version(tmp_path)
    staging = ilab.efs_path / ".reefguide-staging" / DEST.replace("/", "%2F") / DEST
    proc = start_stage(ilab, v2)

    def pulled_some() -> bool:
        """Complete files the pull wrote: the staging copy's own files are hard links of the live
        ones (two names or more), a pulled file is renamed in with one; a temporary is not one."""
        return staging.is_dir() and sum(1 for top, _, files in os.walk(staging) for n in files
                                        if "reefguide-tmp" not in n and os.lstat(os.path.join(top, n)).st_nlink == 1
                                        ) > PULLED_FIRST

    wait_for("pull under way", pulled_some, proc)
    killed = ilab.instance_exec(["pkill", "-KILL", "-f", "[A]nsiballZ_s3_sync"])  # [A]: not pkill itself
    assert killed.returncode == 0, killed.stderr
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "pull (s3_sync) failed" in out, out[-4000:]
    assert tree(ilab.efs_path / DEST) == before
    live = [n for _, _, files in os.walk(ilab.efs_path / "data") for n in files if "reefguide-tmp" in n]
    assert live == []  # temporaries only ever in staging
    assert ec2_state(ilab) == "stopped"
    again = run_playbook(ilab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % v2, "-e", "dest=%s" % DEST)
    assert again.returncode == 0, again.stdout[-3000:]
    assert counts(again.stdout, "Upload") == (0, FILES)
    pulled, skipped = counts(again.stdout, "Pull on the instance")
    assert 0 < pulled < FILES and skipped >= PULLED_FIRST, (pulled, skipped)
    assert tree(ilab.efs_path / DEST) == tree(v2)
    assert not staging.exists()


def test_ssm_never_online_times_out_and_stops_the_instance(ilab: Lab, tmp_path: Path) -> None:
    src = make_src(tmp_path / "src", "never", files=5)
    ilab.set_boot_delay(600)
    try:
        run = run_playbook(ilab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % DEST,
                           "-e", "reefguide_online_timeout=8")
    finally:
        ilab.set_boot_delay(1)
    assert run.returncode != 0
    assert "Online" in run.stdout and "8" in run.stdout, run.stdout[-3000:]
    assert ec2_state(ilab) == "stopped"


def test_two_stage_runs_at_once_one_is_refused(ilab: Lab, tmp_path: Path) -> None:
    """The second run is refused with the holder's name and start time; the first completes alone."""
    a = make_src(tmp_path / "a", "run-a", files=100)
    b = make_src(tmp_path / "b", "run-b", files=5)
    first = start_stage(ilab, a)
    wait_for("the first run's lock", lambda: locked(ilab), first)
    second = run_playbook(ilab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % b, "-e", "dest=%s" % DEST)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert second.returncode != 0
    m = re.search(r"deployment is locked by run (\S+) by (\S+@\S+) since (\d{4}-\d\d-\d\dT[\d:]+Z)", second.stdout)
    assert m, second.stdout[-3000:]
    assert tree(ilab.efs_path / DEST) == tree(a)  # nothing of the second run interleaved
    assert not locked(ilab)
