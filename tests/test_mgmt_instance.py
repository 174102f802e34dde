"""mgmt_instance starts and stops the lab's management instance; it never terminates."""

from __future__ import annotations

import re

from helpers import ROOT, run_module
from lab import Lab


def power(lab: Lab, state: str, check: bool = False, **extra):
    args = {"instance_id": lab.instance_id, "state": state, "poll_interval": 0.2}
    args.update(extra)
    return run_module("mgmt_instance", args, env=lab.env, check=check)


def test_start_waits_for_online_and_reports_what_it_did(lab: Lab) -> None:
    lab.stop_instance()
    lab.set_boot_delay(3)
    try:
        planned = power(lab, "running", check=True)
        assert planned["changed"] and planned["state_before"] == "stopped"
        assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped", "check mode started it"
        res = power(lab, "running")
        assert res["changed"] and res["started_by_this_call"] and res["ping_status"] == "Online"
        assert res["state_before"] == "stopped" and res["state_after"] == "running"
        assert lab.online()
        again = power(lab, "running")
        assert again["changed"] is False and again["started_by_this_call"] is False
        # what a stage does: ask for the start, upload while it boots, then wait with a second call
        lab.stop_instance()
        lab.set_boot_delay(600)  # not Online until the test shortens it
        asked = power(lab, "running", wait=False)
        assert asked["changed"] and asked["started_by_this_call"] and asked["state_before"] == "stopped"
        assert asked["ping_status"] is None and not lab.online(), asked  # it returned without waiting
        assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] in ("pending", "running")
        lab.set_boot_delay(1)
        waited = power(lab, "running")
        assert waited["ping_status"] == "Online" and waited["state_after"] == "running" and lab.online()
        assert waited["started_by_this_call"] is False and waited["changed"] is False  # the first call started it
    finally:
        lab.set_boot_delay(1)


def test_stop_is_idempotent(lab: Lab) -> None:
    lab.start_instance()
    res = power(lab, "stopped")
    assert res["changed"] and res["stopped_by_this_call"] and res["state_after"] == "stopped"
    assert power(lab, "stopped")["changed"] is False


def test_never_online_times_out_clearly(lab: Lab) -> None:
    lab.stop_instance()
    lab.set_boot_delay(60)
    try:
        res = power(lab, "running", online_timeout=2)
        assert res.get("failed") and "never reported it Online" in res["msg"]
        assert "AmazonSSMManagedInstanceCore" in res["msg"]
    finally:
        lab.set_boot_delay(1)
        lab.stop_instance()


def test_terminated_instance_is_refused_and_unknown_id_named(lab: Lab) -> None:
    ec2 = lab.client("ec2")
    other = ec2.run_instances(ImageId="ami-0a1b2c3d4e5f60718", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[other])
    res = run_module("mgmt_instance", {"instance_id": other, "state": "running"}, env=lab.env)
    assert res.get("failed") and "terminated" in res["msg"] and "never terminates" in res["msg"]
    res = run_module("mgmt_instance", {"instance_id": "i-0000000000000dead", "state": "stopped"}, env=lab.env)
    assert res.get("failed") and "i-0000000000000dead" in res["msg"]


def test_no_code_path_terminates() -> None:
    source = (ROOT / "library" / "mgmt_instance.py").read_text()
    assert not re.search(r"terminate_instances|TerminateInstances", source)
