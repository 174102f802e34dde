"""Runs never interfere: a run refused by another run's lock touches nothing, the instance
included (docs/reliability.md, "Runs that interfere")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import ROOT, run_playbook
from lab import Lab, running_lab

INVENTORY = ROOT / "inventory" / "lab.yml"


@pytest.fixture(scope="module")
def rlab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("rlab")) as lab:
        yield lab


def ec2_state(lab: Lab) -> str:
    return lab.supervisor()["instances"][lab.instance_id]["ec2_state"]


@pytest.fixture
def held_by_a_running_stage(rlab: Lab):
    """What a stage in its remote part looks like from outside: its lock held, the instance running."""
    s3 = rlab.client("s3")
    lock = {"run_id": "20261202T000000Z-live", "holder": "alice@laptop", "since": "2026-12-02T00:00:00Z",
            "purpose": "stage data/reefguide"}
    s3.put_object(Bucket=rlab.bucket, Key="reefguide-efs/lock.json", Body=json.dumps(lock).encode())
    rlab.start_instance()
    yield
    s3.delete_object(Bucket=rlab.bucket, Key="reefguide-efs/lock.json")
    rlab.stop_instance()


def test_a_teardown_refused_by_the_lock_leaves_the_instance_running(rlab: Lab, held_by_a_running_stage) -> None:
    run = run_playbook(rlab.env, INVENTORY, "teardown.yml")
    assert run.returncode != 0 and "locked by run 20261202T000000Z-live" in run.stdout, run.stdout[-3000:]
    assert ec2_state(rlab) == "running"


def test_a_refused_stage_with_force_stop_leaves_the_instance_running(rlab: Lab, held_by_a_running_stage,
                                                                     tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.toml").write_text("x = 1\n")
    run = run_playbook(rlab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src,
                       "-e", "dest=data/reefguide/refused", "-e", "force_stop=true")
    assert run.returncode != 0 and "locked by run 20261202T000000Z-live" in run.stdout, run.stdout[-3000:]
    assert ec2_state(rlab) == "running"


def test_a_refused_rollback_leaves_the_instance_running(rlab: Lab, held_by_a_running_stage) -> None:
    run = run_playbook(rlab.env, INVENTORY, "rollback.yml", "-e", "dest=data/reefguide/refused",
                       "-e", "force_stop=true")
    assert run.returncode != 0 and "locked by run 20261202T000000Z-live" in run.stdout, run.stdout[-3000:]
    assert ec2_state(rlab) == "running"
