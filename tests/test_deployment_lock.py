"""deployment_lock: one run per deployment, the refused run learns who holds it; a lock
whose holder still refreshes it (its heartbeat) is not broken without force."""

from __future__ import annotations

import datetime
import json
import time

from helpers import run_module
from lab import Lab

KEY = "reefguide-efs/test-lock.json"


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
    lock(lab, state="broken", force=True)


def test_check_mode_takes_nothing_and_break_removes_any_lock(lab: Lab) -> None:
    planned = lock(lab, run_id="run-c", check=True)
    assert planned["changed"] and not planned.get("failed")
    assert lock(lab, run_id="run-d")["changed"], "check mode must not have taken the lock"
    broken = lock(lab, state="broken", force=True)
    assert broken["changed"] and broken["previous"]["run_id"] == "run-d"
    assert lock(lab, state="broken")["changed"] is False


def test_missing_bucket_is_a_clear_error(lab: Lab) -> None:
    res = lock(lab, bucket="no-such-bucket-reefguide", run_id="x")
    assert res.get("failed") and "NoSuchBucket" in res["msg"] and "stack name" in res["msg"]


def put_lock(lab: Lab, **fields) -> None:
    lab.client("s3").put_object(Bucket=lab.bucket, Key=KEY, Body=json.dumps(fields).encode())


def utc(seconds_ago: float) -> str:
    when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_break_refuses_a_live_holder_unless_forced(lab: Lab) -> None:
    taken = lock(lab, run_id="run-live", holder="carol@laptop", purpose="stage data/reefguide", ttl=300)
    assert taken["changed"] and taken["lock"]["heartbeat"] and taken["lock"]["ttl"] == 300, taken
    refused = lock(lab, state="broken")
    assert refused.get("failed"), refused
    msg = refused["msg"]
    assert "carol@laptop" in msg and "run-live" in msg and taken["lock"]["since"] in msg, msg
    assert "heartbeat" in msg and "break_lock=force" in msg and "wait" in msg, msg
    assert lock(lab, run_id="run-other").get("failed"), "the refused break must have left the lock"
    forced = lock(lab, state="broken", force=True)
    assert forced["changed"] and forced["previous"]["run_id"] == "run-live" and forced["lock"] == {}, forced
    assert lock(lab, run_id="run-other", state="absent")["changed"] is False


def test_a_heartbeat_older_than_its_ttl_or_none_at_all_is_broken_without_force(lab: Lab) -> None:
    put_lock(lab, run_id="run-dead", holder="dave@ci", since=utc(900), purpose="teardown",
             heartbeat=utc(400), ttl=300)
    broken = lock(lab, state="broken")
    assert not broken.get("failed") and broken["changed"] and broken["previous"]["run_id"] == "run-dead", broken
    # a lock of the format before heartbeats: stale, as before
    put_lock(lab, run_id="run-old", holder="erin@laptop", since=utc(60), purpose="teardown")
    broken = lock(lab, state="broken")
    assert not broken.get("failed") and broken["changed"] and broken["previous"]["run_id"] == "run-old", broken


def test_the_holder_refreshes_its_heartbeat_and_no_other_run_can(lab: Lab) -> None:
    put_lock(lab, run_id="run-r", holder="frank@laptop", since=utc(120), purpose="teardown",
             heartbeat=utc(120), ttl=300)
    refreshed = lock(lab, run_id="run-r", state="refreshed")
    assert not refreshed.get("failed") and refreshed["changed"], refreshed
    assert refreshed["lock"]["heartbeat"] > refreshed["previous"]["heartbeat"], refreshed
    assert refreshed["lock"]["since"] == refreshed["previous"]["since"]
    other = lock(lab, run_id="run-s", state="refreshed")
    assert other.get("failed") and "run-r" in other["msg"] and "frank@laptop" in other["msg"], other
    lock(lab, run_id="run-r", state="absent")
    gone = lock(lab, run_id="run-r", state="refreshed")
    assert gone.get("failed") and "no lock" in gone["msg"], gone


def test_the_keeper_refreshes_while_the_lock_is_ours_and_stops_when_it_is_released(lab: Lab) -> None:
    lock(lab, run_id="run-k", ttl=3)
    t0 = time.time()
    kept = lock(lab, run_id="run-k", state="kept_alive", ttl=3, max_seconds=3)
    assert 2.5 < time.time() - t0 < 20 and not kept.get("failed"), kept
    assert kept["refreshes"] >= 2 and kept["lock"]["heartbeat"] > kept["previous"]["heartbeat"], kept
    lock(lab, run_id="run-k", state="absent")
    t0 = time.time()
    ended = lock(lab, run_id="run-k", state="kept_alive", ttl=3, max_seconds=60)
    assert time.time() - t0 < 20 and not ended.get("failed") and "no longer" in ended["msg"], ended
    s3 = lab.client("s3")
    assert "Contents" not in s3.list_objects_v2(Bucket=lab.bucket, Prefix=KEY), "released lock came back"


def test_the_keeper_stops_when_the_run_it_watches_is_gone_and_leaves_the_lock_breakable(lab: Lab) -> None:
    lock(lab, run_id="run-w", ttl=30)
    t0 = time.time()
    ended = lock(lab, run_id="run-w", state="kept_alive", ttl=30, max_seconds=60, watch_pid=2 ** 22 + 1)
    assert time.time() - t0 < 20 and not ended.get("failed") and "gone" in ended["msg"], ended
    # the run is known dead: its lock is breakable at once, not only after the ttl
    broken = lock(lab, state="broken")
    assert not broken.get("failed") and broken["previous"]["run_id"] == "run-w", broken
    assert "heartbeat" not in broken["previous"] and "ended without releasing" in broken["previous"]["ended"]
