"""A live run's lock is not broken by `break_lock=true`: the stage refreshes its lock's
heartbeat in the background, so a teardown started while it runs is refused and the stage
completes (docs/reliability.md, "Runs that interfere"). The stage's pull is held while the
teardown tries, so the outcome does not depend on how busy the machine is."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from test_interruptions import make_src, remote_part, tree, wait_for

from helpers import ROOT, VENV_BIN, ansible_env, run_playbook
from lab import Lab, running_lab

INVENTORY = ROOT / "inventory" / "lab.yml"
DEST = "data/reefguide/heartbeat"
TTL = 6


@pytest.fixture(scope="module")
def hlab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("hlab")) as lab:
        yield lab


def lock_object(lab: Lab) -> dict:
    try:
        body = lab.client("s3").get_object(Bucket=lab.bucket, Key="reefguide-efs/lock.json")["Body"].read()
    except Exception:
        return {}
    return json.loads(body)


def test_break_lock_true_is_refused_while_the_stage_runs(hlab: Lab, tmp_path: Path) -> None:
    src = make_src(tmp_path / "src", "live", files=1500)
    env = ansible_env(hlab.env)
    env["ANSIBLE_STDOUT_CALLBACK"] = "default"
    env["ANSIBLE_ASYNC_DIR"] = str(tmp_path / "async")  # where async_wrapper would leave its result files
    # a boot that outlasts the ttl: without a heartbeat the lock would look stale by the remote part
    hlab.set_boot_delay(TTL + 3)
    try:
        stage = subprocess.Popen([str(VENV_BIN / "ansible-playbook"), "-i", str(INVENTORY), "stage_data.yml",
                                  "-e", "src=%s" % src, "-e", "dest=%s" % DEST, "-e", "reefguide_lock_ttl=%d" % TTL],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        wait_for("the stage's lock", lambda: bool(lock_object(hlab)), stage)
        taken = time.time()
        wait_for("remote session", lambda: remote_part(hlab), stage)
        assert time.time() - taken > TTL, "the stage reached its remote part before its lock was ttl old"
        # the pull is held (SIGSTOP) until the teardown has tried: on a loaded machine the stage
        # could otherwise end, and release its lock, before the teardown's ansible-playbook got to it.
        # The module's own process only (python AnsiballZ_s3_sync.py), not async_wrapper's.
        pull = ["-f", "^[^ ]+ [^ ]*/AnsiballZ_s3_sync[.]py"]
        wait_for("the pull on the instance, held", lambda: hlab.instance_exec(
            ["pkill", "-STOP"] + pull).returncode == 0, stage, timeout=300)
        try:
            tidy = run_playbook(hlab.env, INVENTORY, "teardown.yml", "-e", "break_lock=true")
        finally:
            hlab.instance_exec(["pkill", "-CONT"] + pull)
        out, _ = stage.communicate(timeout=600)
    finally:
        hlab.set_boot_delay(1)
    assert tidy.returncode != 0, tidy.stdout[-3000:]
    assert "heartbeat" in tidy.stdout and "break_lock=force" in tidy.stdout, tidy.stdout[-3000:]
    assert stage.returncode == 0, out[-3000:]
    assert tree(hlab.efs_path / DEST) == tree(src)
    assert lock_object(hlab) == {}
    assert hlab.supervisor()["instances"][hlab.instance_id]["ec2_state"] == "stopped"
    # the heartbeat ran in a daemon forked from the task's worker, not under async_wrapper: no result
    # file left on the controller, and nothing of the run outlives it (it watches the run's pid)
    assert not (tmp_path / "async").exists() or list((tmp_path / "async").iterdir()) == []
    deadline = time.time() + 60
    while stage_processes(src):
        assert time.time() < deadline, stage_processes(src)
        time.sleep(0.2)


def stage_processes(src: Path) -> list[str]:
    """Processes whose command line is the stage's (ansible-playbook and its forks)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path("/proc/%s/cmdline" % entry).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ansible-playbook" in cmd and "src=%s " % src in cmd + " ":
            found.append("%s %s" % (entry, cmd))
    return found


def test_break_lock_accepts_only_true_false_or_force(hlab: Lab) -> None:
    run = run_playbook(hlab.env, INVENTORY, "teardown.yml", "-e", "break_lock=maybe")
    assert run.returncode != 0 and "break_lock" in run.stdout and "force" in run.stdout, run.stdout[-3000:]
    assert lock_object(hlab) == {}
