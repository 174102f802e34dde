"""stage_data.yml against two deployments in one run, and bad input refused before anything starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, make_tree, run_playbook, tree
from lab import Lab


def playbook(lab: Lab, inventory: Path, *args: str) -> subprocess.CompletedProcess:
    return run_playbook(lab.env, inventory, *args)


def two_deployments(lab: Lab, tmp_path: Path) -> Path:
    other = json.loads(lab.ctl("deploy", "--stack-name", "reefguide-second").stdout)
    hosts = {
        "lab": {"reefguide_stack_name": lab.stack_name},
        "second": {"reefguide_stack_name": other["stack_name"]},
    }
    for host in hosts.values():
        host.update(reefguide_region="ap-southeast-2", reefguide_lab=True,
                    reefguide_instance_endpoint_url=lab.env["AWS_ENDPOINT_URL"])
    inv = tmp_path / "two.json"
    inv.write_text(json.dumps({"all": {"children": {"reefguide": {"hosts": hosts}}}}))
    return inv


def test_two_deployments_staged_in_one_run(lab: Lab, tmp_path: Path) -> None:
    inv = two_deployments(lab, tmp_path)
    src = tmp_path / "pkg"
    subprocess.run([sys.executable, str(ROOT / "lab" / "sample_data.py"), str(src)], check=True, capture_output=True)
    run = playbook(lab, inv, "stage_data.yml", "-e", "src=%s" % src, "-e", "preset=adria_datapackage",
                   "-e", "package=Both")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    # waiting for the instance is not shown as failing and retrying
    assert "FAILED" not in run.stdout and "RETRYING" not in run.stdout, run.stdout[-4000:]
    state = json.loads((lab.dir / "lab.json").read_text())
    for stack in (lab.stack_name, "reefguide-second"):
        efs = lab.dir / "efs" / state["stacks"][stack]["fs_id"] / "data/reefguide/adria/datapackages/Both"
        diff = subprocess.run(["diff", "-r", str(src), str(efs)], capture_output=True, text=True)
        assert diff.returncode == 0, (stack, diff.stdout)
    assert {i["ec2_state"] for i in lab.supervisor()["instances"].values()} <= {"stopped", "terminated"}

    # A file src onto a file of that release (or below one) would fail at the release, after the
    # upload: the record knows the file, so the stage is refused before anything starts.
    dest = "data/reefguide/adria/datapackages/Both"
    live = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())[0]
    new = tmp_path / live.rsplit("/", 1)[-1]
    new.write_text("new\n")
    sessions = lab.sessions_started()
    for onto in ("%s/%s" % (dest, live), "%s/%s/below" % (dest, live)):
        run = playbook(lab, ROOT / "inventory" / "lab.yml", "stage_data.yml", "-e", "src=%s" % new,
                       "-e", "dest=%s" % onto)
        out = " ".join(run.stdout.split())  # YAML output wraps long lines
        assert run.returncode != 0 and "refused, nothing started" in out, run.stdout[-3000:]
        assert "a file, %s/%s, in what is live at %s" % (dest, live, dest) in out, run.stdout[-3000:]
        assert "dest=%s -e mode=merge" % ("%s/%s" % (dest, live)).rsplit("/", 1)[0] in out
    assert lab.sessions_started() == sessions
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"
    efs = lab.dir / "efs" / state["stacks"][lab.stack_name]["fs_id"] / dest
    assert subprocess.run(["diff", "-r", str(src), str(efs)]).returncode == 0


def test_bad_dest_is_refused_before_anything_starts(lab: Lab, tmp_path: Path) -> None:
    inv = Path(ROOT / "inventory" / "lab.yml")
    before = lab.sessions_started()
    src = tmp_path / "d"
    src.mkdir()
    (src / "f").write_text("x")
    for args, words in ((["-e", "dest=../etc"], ".."), (["-e", "dest=/data/reefguide"], "absolute"),
                        (["-e", "preset=nope"], "reefguide_data"), ([], "dest=")):
        run = playbook(lab, inv, "stage_data.yml", "-e", "src=%s" % src, *args)
        assert run.returncode != 0 and words in run.stdout, (args, run.stdout[-2000:])
    run = playbook(lab, inv, "stage_data.yml", "-e", "src=%s" % (tmp_path / "missing"), "-e", "preset=reefguide_data")
    assert run.returncode != 0 and "does not exist" in run.stdout
    assert lab.sessions_started() == before
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"


def test_teardown_check_on_a_running_instance_lists_what_would_go_and_changes_nothing(
        lab: Lab, tmp_path: Path) -> None:
    inv = ROOT / "inventory" / "lab.yml"
    dest = "data/reefguide/tdcheck"
    async_dir = lab.dir / "instances" / lab.instance_id / "root" / ".ansible_async"  # async_wrapper's default
    jobs_dir = lab.dir / "instances" / lab.instance_id / "run" / "reefguide-efs" / "jobs"  # where ours go
    results_before = set(os.listdir(async_dir)) if async_dir.is_dir() else set()
    for version in ("1", "2"):
        src = tmp_path / ("v" + version)
        src.mkdir()
        (src / "table.csv").write_text("version %s\n" % version * 1000)
        run = playbook(lab, inv, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % dest)
        assert run.returncode == 0, run.stdout[-3000:]
    # each detached step's result file on the instance (in its job's own directory) goes once it has
    # been read, with the directory and the job's record; none lands in async_wrapper's default directory
    assert jobs_dir.is_dir() and os.listdir(jobs_dir) == []
    assert (set(os.listdir(async_dir)) if async_dir.is_dir() else set()) <= results_before
    leftover = lab.efs_path / ".reefguide-staging" / "dead-run" / "big.bin"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"\0" * 300000)
    releases = lab.efs_path / ".reefguide-releases"
    before = sorted(str(p.relative_to(lab.efs_path)) for p in releases.rglob("*"))

    # with the instance stopped, a check run says from the records what a removal would take
    sessions = lab.sessions_started()
    stopped = playbook(lab, inv, "teardown.yml", "--check", "-e", '{"remove": ["%s"]}' % dest)
    out = " ".join(stopped.stdout.split())  # YAML output wraps long lines
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert "EFS: not inspected (a check run does not start the stopped instance)" in out, stopped.stdout[-3000:]
    assert re.search(r"%s: 1 files, 10000 bytes, would be kept as release \S+, not deleted" % dest, out), out[-3000:]
    assert lab.sessions_started() == sessions
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"
    lab.start_instance()
    sessions = lab.sessions_started()

    check = playbook(lab, inv, "teardown.yml", "--check", "-e", "keep=0")
    assert check.returncode == 0, check.stdout[-3000:]
    assert "CHECK MODE" in check.stdout
    m = re.search(r"EFS: (\d+) bytes to free .*?releases pruned: \[([^\]]*)\]", check.stdout, re.S)
    assert m and int(m.group(1)) >= 300000 and m.group(2).strip(), check.stdout[-3000:]
    assert lab.sessions_started() > sessions  # it looked at EFS: the instance was running
    assert leftover.exists()
    assert sorted(str(p.relative_to(lab.efs_path)) for p in releases.rglob("*")) == before
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "running"

    # a stage --check with no record to trust, the instance running: the plan is what EFS holds
    handmade = lab.efs_path / "data/reefguide/handmade"
    make_tree(handmade, {"same.csv": "1\n", "edited.csv": "old\n", "extra.csv": "x\n"})
    src = make_tree(tmp_path / "handmade", {"same.csv": "1\n", "edited.csv": "new\n", "added.csv": "y\n"})
    on_efs = tree(handmade)
    check = playbook(lab, inv, "stage_data.yml", "--check", "-e", "src=%s" % src,
                     "-e", "dest=data/reefguide/handmade")
    out = " ".join(check.stdout.split())  # YAML output wraps long lines
    assert check.returncode == 0, check.stdout[-3000:]
    assert ("Plan (compared on the instance with what EFS holds at data/reefguide/handmade): 1 new, 1 changed, "
            "1 removed, 1 unchanged files") in out, check.stdout[-3000:]
    assert "the plan compares src with what EFS holds (read-only)" in out
    assert tree(handmade) == on_efs
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "running"

    real = playbook(lab, inv, "teardown.yml", "-e", "keep=0")
    assert real.returncode == 0, real.stdout[-3000:]
    assert not leftover.exists()
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"
    assert (lab.efs_path / dest / "table.csv").read_text().startswith("version 2")
