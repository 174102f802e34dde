"""deployment_lock: one run per deployment, the refused run learns who holds it."""

from __future__ import annotations

from helpers import run_module
from lab import Lab


def lock(lab: Lab, **args):
    args.setdefault("bucket", lab.bucket)
    args.setdefault("key", "reefguide-efs/test-lock.json")
    check = args.pop("check", False)
    return run_module("deployment_lock", args, env=lab.env, check=check)


def test_second_run_is_refused_with_holder_and_time(lab: Lab) -> None:
    first = lock(lab, run_id="run-a", holder="alice@laptop", purpose="stage data/reefguide")
    assert first["changed"] and not first.get("failed"), first
    again = lock(lab, run_id="run-a")
    assert again["changed"] is False and not again.get("failed")
    second = lock(lab, run_id="run-b", holder="bob@ci")
    assert second.get("failed")
    assert "alice@laptop" in second["msg"] and "run-a" in second["msg"] and first["lock"]["since"] in second["msg"]
    assert "break" in second["msg"]
    # releasing as someone else leaves it alone
    other = lock(lab, run_id="run-b", state="absent")
    assert other["changed"] is False and other["lock"]["run_id"] == "run-a"
    released = lock(lab, run_id="run-a", state="absent")
    assert released["changed"] and released["lock"] == {}
    assert lock(lab, run_id="run-b")["changed"]
    lock(lab, state="broken")


def test_check_mode_takes_nothing_and_break_removes_any_lock(lab: Lab) -> None:
    planned = lock(lab, run_id="run-c", check=True)
    assert planned["changed"] and not planned.get("failed")
    assert lock(lab, run_id="run-d")["changed"], "check mode must not have taken the lock"
    broken = lock(lab, state="broken")
    assert broken["changed"] and broken["previous"]["run_id"] == "run-d"
    assert lock(lab, state="broken")["changed"] is False


def test_missing_bucket_is_a_clear_error(lab: Lab) -> None:
    res = lock(lab, bucket="no-such-bucket-reefguide", run_id="x")
    assert res.get("failed") and "NoSuchBucket" in res["msg"] and "stack name" in res["msg"]
