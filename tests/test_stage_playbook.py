"""stage_data.yml against two deployments in one run, and bad input refused before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, run_playbook
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
    state = json.loads((lab.dir / "lab.json").read_text())
    for stack in (lab.stack_name, "reefguide-second"):
        efs = lab.dir / "efs" / state["stacks"][stack]["fs_id"] / "data/reefguide/adria/datapackages/Both"
        diff = subprocess.run(["diff", "-r", str(src), str(efs)], capture_output=True, text=True)
        assert diff.returncode == 0, (stack, diff.stdout)
    assert {i["ec2_state"] for i in lab.status()["instances"].values()} <= {"stopped", "terminated"}


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
    assert lab.status()["instances"][lab.instance_id]["ec2_state"] == "stopped"
