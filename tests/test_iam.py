"""The least-privilege policies of iam/, proven in the lab: `labctl up --iam`
makes moto (and labd, for the SSM calls it answers) enforce them, the
playbooks run with exactly those rights, and a run missing one permission
fails with a message that names it and leaves the instance stopped."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from helpers import ROOT, VENV_BIN, ansible_env, run_module
from lab import Lab, running_lab

sys.path.insert(0, str(ROOT / "lab"))
from reefguide_lab import iam as lab_iam  # noqa: E402

INVENTORY = ROOT / "inventory" / "lab.yml"
PACKAGE = ["-e", "preset=adria_datapackage", "-e", "package=Both"]


@pytest.fixture(scope="module")
def iam_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("iam-lab"), "--iam") as lab:
        yield lab


def admin(lab: Lab, service: str) -> Any:
    user = lab.state["iam"]["users"][lab_iam.ADMIN]
    endpoint = lab.env["AWS_ENDPOINT_URL_SSM"] if service == "ssm" else lab.env["AWS_ENDPOINT_URL"]
    return boto3.client(service, endpoint_url=endpoint, region_name=lab.env["AWS_REGION"],
                        aws_access_key_id=user["access_key_id"], aws_secret_access_key=user["secret_access_key"])


def playbook(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    env = ansible_env(lab.env)
    env["ANSIBLE_STDOUT_CALLBACK"] = "default"
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(INVENTORY), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def sample(path: Path, extra: str = "") -> Path:
    subprocess.run([sys.executable, str(ROOT / "lab" / "sample_data.py"), str(path)], check=True,
                   capture_output=True)
    if extra:  # so that the run has something to stage
        (path / "extra.txt").write_text(extra)
    return path


def policy_file(lab: Lab, name: str) -> dict[str, Any]:
    return lab_iam.load_policy(name, lab.state["iam"]["values"])


def without(policy: dict[str, Any], action: str) -> dict[str, Any]:
    out = copy.deepcopy(policy)
    for st in out["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        st["Action"] = [a for a in actions if a != action]
    out["Statement"] = [st for st in out["Statement"] if st["Action"]]
    return out


def ec2_state(lab: Lab) -> str:
    return lab.supervisor()["instances"][lab.instance_id]["ec2_state"]


def denials(lab: Lab) -> list[str]:
    lines = []
    for log in ("moto.log", "labd.log"):
        lines += [ln for ln in (lab.dir / "logs" / log).read_text().splitlines()
                  if ln.startswith("iam: ") and not ln.endswith((" allowed", " allow"))]
    return lines


def test_policies_render_and_scope_resources(iam_lab: Lab) -> None:
    """The files' placeholders all resolve; the resource scoping holds under
    the lab's evaluator (moto checks non-S3 resources only against '*')."""
    lab = iam_lab
    op = policy_file(lab, "operator-policy.json")
    inst = policy_file(lab, "instance-policy.json")
    assert "${" not in json.dumps(op).replace("${aws:", "") and "${" not in json.dumps(inst)
    acct, region = lab.state["iam"]["account"], lab.env["AWS_REGION"]
    mine = "arn:aws:ec2:%s:%s:instance/%s" % (region, acct, lab.instance_id)
    other = "arn:aws:ec2:%s:%s:instance/i-0123456789abcdef0" % (region, acct)
    assert lab_iam.evaluate(op, "ec2:StartInstances", mine) == "allow"
    assert lab_iam.evaluate(op, "ec2:StartInstances", other) == "implicit"
    assert lab_iam.evaluate(op, "ec2:TerminateInstances", mine) == "deny"
    assert lab_iam.evaluate(op, "s3:PutObject", "arn:aws:s3:::%s/elsewhere/x" % lab.bucket) == "implicit"
    assert lab_iam.evaluate(inst, "s3:PutObject", "arn:aws:s3:::%s/reefguide-efs/runs/x" % lab.bucket) == "implicit"
    # restart_workers: the stack's cluster's tasks only, and never a service
    cluster = lab.state["stacks"][lab.stack_name]["cluster"]
    task = "arn:aws:ecs:%s:%s:task/%s/0123456789abcdef" % (region, acct, cluster)
    assert lab_iam.evaluate(op, "ecs:StopTask", task) == "allow"
    assert lab_iam.evaluate(op, "ecs:DescribeTasks", task) == "allow"
    assert lab_iam.evaluate(op, "ecs:StopTask", task.replace(cluster, "another-cluster")) == "implicit"
    service = "arn:aws:ecs:%s:%s:service/%s/web-api" % (region, acct, cluster)
    assert lab_iam.evaluate(op, "ecs:UpdateService", service) == "implicit"
    listing = [st for st in op["Statement"] if st["Action"] == "ecs:ListTasks"]
    assert [st["Condition"] for st in listing] == [
        {"ArnEquals": {"ecs:cluster": "arn:aws:ecs:%s:%s:cluster/%s" % (region, acct, cluster)}}]
    # What moto holds is the files' moto view, nothing more.
    iam = admin(lab, "iam")
    for user, doc in ((lab_iam.OPERATOR, op), (lab_iam.INSTANCE, inst)):
        held = iam.get_user_policy(UserName=user, PolicyName="reefguide-efs")["PolicyDocument"]
        held = json.loads(held) if isinstance(held, str) else held
        assert held == lab_iam.moto_view(doc)
        assert iam.list_attached_user_policies(UserName=user)["AttachedPolicies"] == []
    # labd checks the SSM calls it answers against the policy as written.
    ssm = boto3.client("ssm", endpoint_url=lab.env["AWS_ENDPOINT_URL_SSM"], region_name=region,
                       aws_access_key_id=lab.env["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=lab.env["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(Exception, match="not authorized to perform: ssm:StartSession"):
        ssm.start_session(Target="i-0123456789abcdef0")
    # the real session-manager-plugin resumes its own session after a websocket error; only its own
    acct_session = "arn:aws:ssm:%s:%s:session/%%s" % (region, acct)
    who = {"aws:username": lab_iam.OPERATOR, "aws:userid": "AIDAOPERATOR"}
    assert lab_iam.evaluate(op, "ssm:ResumeSession", acct_session % (lab_iam.OPERATOR + "-0a1b"), who) == "allow"
    assert lab_iam.evaluate(op, "ssm:ResumeSession", acct_session % "someone-else-0a1b", who) == "implicit"
    with pytest.raises(Exception, match="not authorized to perform: ssm:ResumeSession"):
        ssm.resume_session(SessionId="someone-else-0a1b")
    with pytest.raises(Exception, match="DoesNotExist"):  # allowed, and answered: no such session
        ssm.resume_session(SessionId=lab_iam.OPERATOR + "-0a1b")
    ec2 = boto3.client("ec2", endpoint_url=lab.env["AWS_ENDPOINT_URL"], region_name=region,
                       aws_access_key_id=lab.env["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=lab.env["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(Exception, match="ec2:TerminateInstances"):
        ec2.terminate_instances(InstanceIds=[lab.instance_id])
    assert ec2_state(lab) == "stopped"


def test_stage_then_teardown_with_exactly_these_policies(iam_lab: Lab, tmp_path: Path) -> None:
    lab = iam_lab
    seen = len(denials(lab))
    src = sample(tmp_path / "Both")
    run = playbook(lab, "stage_data.yml", "-e", "src=%s" % src, *PACKAGE)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    live = lab.efs_path / "data/reefguide/adria/datapackages/Both"
    diff = subprocess.run(["diff", "-r", str(src), str(live)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout
    assert ec2_state(lab) == "stopped"
    run = playbook(lab, "teardown.yml")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert ec2_state(lab) == "stopped"
    # restart_workers=force under the operator's policy: finds the worker task, stops it, and is refused nothing
    lab.ctl("workers", "start")
    busy = json.loads(lab.ctl("workers", "job", "--type", "TEST", "--seconds", "100000", "--wait").stdout)
    stopped = run_module("ecs_workers", {"stack_name": lab.stack_name, "restart": "force"}, env=lab.env)
    assert [(w["task"], w["outcome"]) for w in stopped.get("workers", [])] == [(busy["task"], "stopped")], stopped
    lab.ctl("workers", "stop")
    assert denials(lab)[seen:] == []
    assert "iam: reefguide-operator ecs:StopTask" in (lab.dir / "logs" / "moto.log").read_text()
    # The pull on the instance ran as reefguide-instance, not with the operator's keys.
    moto_log = (lab.dir / "logs" / "moto.log").read_text()
    assert "iam: reefguide-instance s3:GetObject arn:aws:s3:::%s/reefguide-efs/runs/" % lab.bucket in moto_log


@pytest.mark.parametrize("user, action, words", [
    (lab_iam.OPERATOR, "ec2:StartInstances", "not authorized to perform: ec2:StartInstances"),
    (lab_iam.OPERATOR, "s3:PutObject", "needs s3:PutObject"),
    (lab_iam.INSTANCE, "s3:GetObject", "needs s3:GetObject"),
])
def test_a_missing_permission_fails_clearly_and_leaves_the_instance_stopped(
        iam_lab: Lab, tmp_path: Path, user: str, action: str, words: str) -> None:
    lab = iam_lab
    name = "operator-policy.json" if user == lab_iam.OPERATOR else "instance-policy.json"
    full = policy_file(lab, name)
    iam = admin(lab, "iam")
    live = lab.efs_path / "data/reefguide/adria/datapackages/Both"
    before = sorted(p.name for p in live.iterdir()) if live.is_dir() else None
    lab_iam.put_policy(iam, user, without(full, action))
    try:
        src = sample(tmp_path / "Both", extra="without %s" % action)
        run = playbook(lab, "stage_data.yml", "-e", "src=%s" % src, *PACKAGE)
    finally:
        lab_iam.put_policy(iam, user, full)
    assert run.returncode != 0
    assert words in run.stdout, run.stdout[-4000:]
    assert ec2_state(lab) == "stopped", run.stdout[-3000:]
    assert (sorted(p.name for p in live.iterdir()) if live.is_dir() else None) == before  # live data untouched
