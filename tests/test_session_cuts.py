"""stage_data.yml while Session Manager ends sessions in the middle of a command (issue 24, §2).

On AWS a session can end at any moment (the maximum session duration, TerminateSession, an
agent restart, a network drop); amazon.aws's aws_ssm then returns no exit code and whatever
output had arrived, without raising. The lab ends a session on demand at a chosen command,
after the command ran and before its end reached the client (lab/reefguide_lab/session_cuts.py):
the start of the pull (the job runs; a start sent again would be a second pull), a poll of it
(read as "the job died", its record would be forgotten under it), the mount (asked again, it
finds EFS mounted). And with a maximum session duration shorter than the remote part, sessions
end wherever they happen to be. Each stage completes, EFS equals src, exactly one pull job ran,
the instance is stopped afterwards."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, run_playbook, tree
from lab import Lab, PullWatcher, running_lab

INVENTORY = ROOT / "inventory" / "lab.yml"
LATENCY = 0.3  # seconds per GET of the pull: a pull of FILES lasts seconds, polled several times
FILES = 12
FAST_POLLS = ("-e", "reefguide_remote_poll_interval=1", "-e", "reefguide_pull_concurrency=1")
# the commands to cut, as the aws_ssm plugin sends them (the lab matches the command it relays)
PULL_START = r"async_wrapper\.py j\d+ \d+ \S+AnsiballZ_s3_sync\.py"
PULL_POLL = r"--reefguide-efs-job--.*-pull\.progress\.json"
MOUNT = r"python\S* \S+AnsiballZ_efs_mount\.py"


@pytest.fixture(scope="module")
def clab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The pull's GETs (on the instance, not the plugin's presigned transfers) are slowed LATENCY."""
    with running_lab(tmp_path_factory.mktemp("cut-lab"), "--s3-faults", "0") as lab:
        lab.ctl("faults", "--rate", "0", "--latency-seconds", str(LATENCY), "--presigned", "no",
                "--match", r"^GET /%s/reefguide-efs/runs/.*\.bin$" % re.escape(lab.bucket))
        yield lab


def make_src(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(FILES):
        (root / ("part%02d.bin" % i)).write_bytes(os.urandom(32 * 1024 + i))
    return root


def stage(lab: Lab, src: Path, dest: str, *extra: str) -> tuple[str, int, set]:
    """(output, return code, the pull jobs seen running in the instance) of one stage."""
    watcher = PullWatcher(lab)
    try:
        run = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % dest,
                           *FAST_POLLS, *extra, timeout=900)
    finally:
        most = watcher.done()
    out = run.stdout + run.stderr
    Path(os.environ.get("REEFGUIDE_TEST_LOG", "/dev/null")).write_text(out)
    assert most <= 1, "two pulls at once"
    return out, run.returncode, watcher.seen


def ssm(lab: Lab) -> dict:
    return lab.supervisor()["ssm"]


def test_sessions_cut_at_the_pull_start_a_poll_and_the_mount_stage_once(clab: Lab, tmp_path: Path) -> None:
    src = make_src(tmp_path / "src")
    dest = "data/reefguide/cut"
    transfers = ssm(clab)["module_transfers"].get("s3_sync", 0)
    ended = ssm(clab)["sessions_ended"]["cut"]
    # the last rule never fires: it counts the efs_mount runs the instance was sent
    armed = clab.cut_sessions((PULL_START, 1), (PULL_POLL, 2), (MOUNT, 1), (MOUNT, 1000))
    assert [c["fired"] for c in armed["cuts"]] == [False] * 4
    try:
        out, rc, pulls = stage(clab, src, dest)
        cuts = clab.served_json("labd_port", "/lab/session-cuts")
    finally:
        clab.cut_sessions()
    assert rc == 0, out[-5000:]
    assert [c["fired"] for c in cuts["cuts"]] == [True] * 3 + [False], cuts  # each cut happened, mid-run
    # the mount, the mount asked again (it found EFS mounted, by this run), and the unmount at the end
    assert cuts["cuts"][3]["seen"] == 3, cuts
    assert ssm(clab)["sessions_ended"]["cut"] == ended + 3
    # the start cut: aws_ssm sends the start again (its read of the ended session fails: ssm_retry) or
    # returns without an exit status (then we look); either way the job is found by its token
    assert re.search(r"pull: its job runs \(/run/reefguide-efs/jobs/\w+/j\d+\.\d+\); following it, "
                     r"not starting another", out), out[-5000:]
    assert ssm(clab)["module_transfers"].get("s3_sync", 0) == transfers + 1  # one pull module sent
    assert len(pulls) == 1, pulls  # exactly one pull job ran
    assert tree(clab.efs_path / dest) == tree(src)
    assert clab.supervisor()["instances"][clab.instance_id]["ec2_state"] == "stopped"


def test_a_maximum_session_duration_shorter_than_the_remote_part(clab: Lab, tmp_path: Path) -> None:
    src = make_src(tmp_path / "src")
    dest = "data/reefguide/short-sessions"
    ended = ssm(clab)["sessions_ended"]["duration"]
    clab.ctl("ssm-limits", "--max-duration", "4s")
    try:
        out, rc, pulls = stage(clab, src, dest)
    finally:
        clab.ctl("ssm-limits", "--max-duration", "0")
    assert rc == 0, out[-5000:]
    assert ssm(clab)["sessions_ended"]["duration"] > ended  # sessions did end under the run
    assert len(pulls) == 1, pulls
    assert tree(clab.efs_path / dest) == tree(src)
    assert clab.supervisor()["instances"][clab.instance_id]["ec2_state"] == "stopped"


RELEASE_POLL = r": reefguide-efs poll release;"


def test_a_release_that_cannot_be_followed_keeps_the_instance_running_until_the_next_run(
        clab: Lab, tmp_path: Path) -> None:
    """Every poll of the release cut: whether the release ended is unknown, so
    the run fails saying so and leaves the instance running (a stop could cut the swap halfway); the next
    run, a teardown, waits for the release's job, then stops the instance; the release did complete."""
    src = make_src(tmp_path / "src")
    dest = "data/reefguide/release-unfollowed"
    # more cuts than the run makes polls of it: aws_ssm's ssm_retry resends a cut command in a new
    # session (cut again) and gives up with EIO, or ask_again gives up after 5 cuts; either ends it
    clab.cut_sessions(*[(RELEASE_POLL, n) for n in range(1, 41)])
    try:
        out, rc, _pulls = stage(clab, src, dest)
        cuts = clab.served_json("labd_port", "/lab/session-cuts")
    finally:
        clab.cut_sessions()
    flat = " ".join(out.split())
    assert rc != 0 and cuts["cuts"][0]["fired"] and not cuts["cuts"][-1]["fired"], (cuts, out[-5000:])
    assert re.search(r"Its job \(release, j\d+\.\d+\) may still be running on the instance: the instance is left "
                     r"running so that it can finish", flat), flat[-5000:]
    assert re.search(r"Instance: \d+ s since the start request; LEFT RUNNING: job j\d+\.\d+, which changes what is "
                     r"live, may still run on it", flat), flat[-5000:]
    assert clab.supervisor()["instances"][clab.instance_id]["ec2_state"] == "running"
    jid = re.search(r"Its job \(release, (j\d+\.\d+)\)", flat).group(1)
    records = clab.instance_exec(["ls", "/run/reefguide-efs/jobs"]).stdout.split()
    assert "%s.json" % jid in records, records  # its record stays for the next run, which waits for it
    down = run_playbook(clab.env, INVENTORY, "teardown.yml", *FAST_POLLS, timeout=900)
    assert down.returncode == 0, down.stdout[-5000:]
    assert clab.supervisor()["instances"][clab.instance_id]["ec2_state"] == "stopped"
    assert tree(clab.efs_path / dest) == tree(src)


def test_a_fresh_amazon_linux_python_gets_boto3_from_a_detached_install_longer_than_one_ssm_call(
        clab: Lab, tmp_path: Path) -> None:
    """Amazon Linux 2023's python3 (3.9) has no boto3 until `dnf install python3-boto3` (issue 24, §4).
    The lab's python3-al2023 hides it until the lab's dnf, slowed past the call timeout, installs it:
    the install runs detached and is followed like every long step; inline, the call would time out."""
    src = make_src(tmp_path / "src")
    dest = "data/reefguide/fresh-python"
    state = clab.dir / "instances" / clab.instance_id / "home" / ".reefguide-lab"
    if not state.parent.is_dir():  # the instance's disk is made at its first boot
        clab.start_instance()
        clab.stop_instance()
    state.mkdir(mode=0o755, exist_ok=True)
    (state / "dnf-seconds").write_text("20")
    (state / "no-boto3").touch()
    try:
        out, rc, pulls = stage(clab, src, dest, "-e", "reefguide_instance_python=/usr/sbin/python3-al2023",
                               "-e", "reefguide_ssm_call_timeout=12")
    finally:
        (state / "no-boto3").unlink(missing_ok=True)
    assert rc == 0, out[-5000:]
    assert not (state / "no-boto3").exists()  # the lab's dnf installed it, asked once
    assert "Instance: its python lacked boto3; python3-boto3 was installed" in out, out[-5000:]
    assert len(pulls) == 1, pulls
    assert tree(clab.efs_path / dest) == tree(src)
    assert clab.supervisor()["instances"][clab.instance_id]["ec2_state"] == "stopped"
