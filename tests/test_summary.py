"""The run summaries (filter_plugins/reefguide_summary.py): what an operator reads after a run."""

from __future__ import annotations

import sys
from typing import Any

from ansible.module_utils.reefguide.worker_tasks import restart_message

from helpers import ROOT

sys.path.insert(0, str(ROOT / "filter_plugins"))

from reefguide_summary import FilterModule, rollback_line, stage_summary, teardown_summary, timeline  # noqa: E402

DEPLOYMENT = {"instance_id": "i-0abc", "bucket": "tb", "efs_id": "fs-12345678"}
REQUEST = {"dest": "data/reefguide", "mode": "merge", "upload_path": "/data/in", "run_prefix": "reefguide-efs/runs/x/"}
COUNTS = {"new": 1, "changed": 2, "removed": 0, "unchanged": 7, "local_files": 10, "local_bytes": 1234}


def staged_run(**over: object) -> dict:
    run = {
        "stack_name": "reefguide-lab", "host": "lab", "check_mode": False, "deployment": DEPLOYMENT,
        "request": REQUEST, "live": {"counts": COUNTS, "release_id": "r1", "recorded": True}, "nothing_to_do": False,
        "upload": {"transferred": {"files": 3, "bytes": 300}, "skipped": {"files": 7}},
        "stage": {"release_id": "r2", "previous_release_id": "r1",
                  "pull": {"transferred": {"files": 3, "bytes": 300}, "skipped": {"files": 7, "bytes": 934},
                           "deleted": {"files": 1}},
                  "usage": {"bytes": 2 * 1024**3, "areas": {"data/reefguide": 2 * 1024**3}, "complete": True}},
        "failure": None, "price_per_gb_month": "0.30",
        "times": {"run_started": "100.0", "upload_started": "104.0", "upload_ended": "106.5",
                  "power_requested": "104.2", "power_seconds": 4, "remote_started": "110", "remote_ended": "114.3",
                  "power_stopped": "116.0", "now": "117.0"},
    }
    run.update(over)
    return run


def test_a_successful_stage_says_what_travelled_the_release_and_how_to_roll_back() -> None:
    lines = stage_summary(staged_run())
    assert lines[0] == "Deployment reefguide-lab: instance i-0abc, transfer bucket tb, EFS fs-12345678"
    assert "Staged /data/in -> EFS:data/reefguide (mode merge)" in lines
    assert "Plan: 1 new, 2 changed, 0 removed, 7 unchanged files (10 files, 1234 bytes locally)" in lines
    assert "Upload: 3 files / 300 bytes transferred, 7 skipped" in lines
    assert ("Pull on the instance: 3 files / 300 bytes transferred, 7 files / 934 bytes reused from EFS, "
            "1 deleted") in lines
    assert ("Release r2 is live (previous: r1). Roll back with: ansible-playbook rollback.yml -l lab "
            "-e dest=data/reefguide") in lines
    assert "Instance: 12 s from start request to stop" in lines
    assert lines[-1] == "EFS now holds 2.000 GiB (data/reefguide 2.0 GiB), about $0.64 a month at $0.30/GB-month"


def test_a_stage_of_what_efs_already_held_says_no_release_was_cut() -> None:
    lines = stage_summary(staged_run(stage=dict(staged_run()["stage"], release_id="r1", previous_release_id="r0",
                                                unchanged=True)))
    assert ("No new release: EFS already held this data at data/reefguide, so release r1 stays live (previous: r0) "
            "and no kept release was pushed out. Roll back with: ansible-playbook rollback.yml -l lab "
            "-e dest=data/reefguide") in lines
    assert not [line for line in lines if line.startswith("Release ")]


def test_the_bytes_the_pull_read_from_efs_are_shown_and_not_invented() -> None:
    pull = {"transferred": {"files": 1, "bytes": 9}, "skipped": {"files": 7}, "deleted": {"files": 0},
            "local_read": {"files": 1, "hashed_bytes": 1048576, "checksum_cache_bytes": 2210, "bytes": 1050786}}
    lines = stage_summary(staged_run(stage=dict(staged_run()["stage"], pull=pull)))
    assert ("Read from EFS to compare: 1 files hashed (1048576 bytes) + the checksum cache (2210 bytes); "
            "unchanged files are known by their size, mtime and inode") in lines
    # a pull result without the count (an older module) gets no line rather than a zero
    assert not [line for line in stage_summary(staged_run()) if line.startswith("Read from EFS")]


def test_timeline_shows_the_upload_overlapping_the_instance_start() -> None:
    assert timeline(staged_run()["times"]) == (
        "upload 4.0-6.5, instance start 4.2-8.2, remote work 10.0-14.3, instance stopped at 16.0, end 17.0")
    assert timeline({"run_started": 5, "now": 7}) == "end 2.0"


def test_nothing_to_do_names_the_live_release_and_starts_nothing() -> None:
    lines = stage_summary(staged_run(nothing_to_do=True, upload={}, stage={}, times={"run_started": 1, "now": 4}))
    assert ("Nothing to do: data/reefguide already holds this data (release r1); nothing uploaded, "
            "the instance was not started.") in lines
    assert not [line for line in lines if line.startswith(("Upload:", "Instance:", "Release"))]


def test_nothing_to_do_says_when_a_run_holds_the_lock() -> None:
    held = ("deployment is locked by run 20261207T0700Z-ab12 by ann@laptop since 2026-12-07T07:00:01Z (stage "
            "data/reefguide). Wait for that run to finish; if it died, break the lock with: …")
    lines = stage_summary(staged_run(nothing_to_do=True, upload={}, stage={}, lock_held=held))
    assert ("Nothing to do: data/reefguide already holds this data (release r1); nothing uploaded, the instance "
            "was not started. But the deployment is locked by run 20261207T0700Z-ab12 by ann@laptop since "
            "2026-12-07T07:00:01Z (stage data/reefguide): if that run died, the instance it started may still be "
            "running; ansible-playbook teardown.yml -e break_lock=true breaks the lock and stops it.") in lines


def test_a_failure_says_where_the_uploads_are_kept() -> None:
    lines = stage_summary(staged_run(failure={"msg": "boom"}, stage={}))
    assert "FAILED: boom" in lines
    assert ("Uploads kept at s3://tb/reefguide-efs/runs/x/: a re-run sends only what is missing; "
            "teardown.yml removes them") in lines


def test_a_failure_says_truthfully_whether_the_release_happened() -> None:
    def said(**over: object) -> list[str]:
        return [x for x in stage_summary(staged_run(failure={"msg": "boom"}, **over))
                if x.startswith(("Live data", "The release"))]

    assert said(stage={}) == ["Live data at data/reefguide untouched: the run failed before its remote part."]
    assert said(stage={"live_changed": False}, record_pending=True) == [
        "Live data at data/reefguide untouched: the run failed before its release."]
    pending = ("Its record is marked pending, so the next stage there compares against what EFS holds "
               "(staging either version again is safe).")
    assert said(stage={"live_changed": True}, record_pending=True) == [
        "The release happened: data/reefguide holds the new data, but the run failed after it. " + pending]
    # the session or the instance lost during the release, or a result without the word: never "untouched"
    for stage in ({"live_changed": None}, {}):
        assert said(stage=stage, record_pending=True) == [
            "The release may have happened: the run lost the instance or its session during it. %s "
            "rollback.yml puts the previous release back." % pending]
    # a run that did not fail says none of it
    assert not [x for x in stage_summary(staged_run()) if x.startswith(("Live data", "The release"))]


def test_the_plan_says_when_the_record_cannot_tell_what_is_live() -> None:
    def plan(live: dict, **request: str) -> str:
        run = staged_run(live=live, request=dict(REQUEST, **request))
        return [x for x in stage_summary(run) if x.startswith("Plan:")][0]

    none = {"counts": dict(COUNTS, new=10, unchanged=0), "recorded": False}
    assert plan(none, mode="replace") == (
        "Plan: no record of what is live at data/reefguide (never staged there, or its record was dropped): every "
        "file is compared on the instance with what EFS holds; mode replace removes there whatever src lacks "
        "(10 files, 1234 bytes locally)")
    assert "removes" not in plan(none)  # merge removes nothing
    marked = {"counts": COUNTS, "recorded": True, "release_id": "r1", "pending": "20261207T0700Z-abc"}
    assert plan(marked) == (
        "Plan: not known on the controller: run 20261207T0700Z-abc was interrupted at data/reefguide before it "
        "recorded what it did, so the record is not taken for what is live; every file is compared on the "
        "instance with what EFS holds (10 files, 1234 bytes locally)")


def instance_line(**over: object) -> str:
    return [x for x in stage_summary(staged_run(**over)) if x.startswith("Instance:")][0]


def test_the_instance_line_tells_what_the_run_did_to_the_instance() -> None:
    running = dict(staged_run()["times"], power_stopped=None)
    assert instance_line(times=running, power={"started_by_run": False}) == (
        "Instance: 13 s since the start request (left running: it was running before)")
    # the run started it, and something else had stopped it before the run put it back
    assert instance_line(times=running, power={"started_by_run": True, "restore": {"state_before": "stopped"}}) == (
        "Instance: 13 s from start request; it was already stopped when the run put it back")
    assert instance_line(times=running, power={"started_by_run": True, "restore": {"skipped": True}}) == (
        "Instance: 13 s since the start request; NOT stopped by this run: stop it with teardown.yml")
    assert instance_line() == "Instance: 12 s from start request to stop"


def test_no_rollback_is_offered_when_there_is_nothing_to_roll_back_to() -> None:
    lines = stage_summary(staged_run(keep="0"))
    assert ("Release r2 is live (previous: r1). keep=0: the previous release was not kept, so there is nothing "
            "to roll back to.") in lines
    first = dict(staged_run()["stage"], previous_release_id=None)
    assert "Release r2 is live (previous: none). There is no earlier release to roll back to." in stage_summary(
        staged_run(stage=first))


def test_an_archive_is_named_as_given_not_by_its_unpack_directory() -> None:
    request = dict(REQUEST, src_kind="archive", upload_path="/tmp/reefguide-efs-run-x/unpacked")
    lines = stage_summary(staged_run(request=request, src="data.tar.gz"))
    assert "Staged data.tar.gz (archive, unpacked on the controller) -> EFS:data/reefguide (mode merge)" in lines


def test_no_uploads_are_said_to_be_kept_when_none_were_made() -> None:
    lines = stage_summary(staged_run(failure={"msg": "boom"}, stage={},
                                     upload={"failed": True, "transferred": {"files": 0}, "skipped": {"files": 0}}))
    assert not [line for line in lines if line.startswith("Uploads kept")]


def test_check_mode_says_nothing_changed() -> None:
    lines = stage_summary(staged_run(check_mode=True, upload={}, stage={}))
    assert lines[1].startswith("CHECK MODE: nothing was changed.")
    assert "Would stage /data/in -> EFS:data/reefguide (mode merge)" in lines


def test_teardown_summary_counts_what_went_and_what_it_saves() -> None:
    lines = teardown_summary({"check_mode": False, "deployment": DEPLOYMENT, "price_per_gb_month": 0.3,
                              "s3": {"deleted": 4, "bytes": 4000,
                                     "multipart": {"uploads": 2, "parts": 5, "bytes": 26214400}},
                              "efs": {"bytes_freed": 3 * 10**9, "pruned": [{"release_id": "r0"}],
                                      "removed": [{"path": "data/reefguide/old"}]}})
    assert lines == [
        "Transfer bucket: 4 objects, 4000 bytes deleted",
        "Incomplete multipart uploads (billed, invisible in listings): 2, 5 parts, 26214400 bytes aborted",
        "EFS: 3000000000 bytes freed (2.79 GiB, about $0.90 a month saved at $0.30/GB-month); releases pruned: "
        "['r0']; paths removed: ['data/reefguide/old']",
        "Instance i-0abc: stopped (never terminated)",
    ]


def test_teardown_check_without_the_instance_says_efs_was_not_inspected() -> None:
    lines = teardown_summary({"check_mode": True, "deployment": DEPLOYMENT, "s3": {}, "efs": None})
    assert lines[0].startswith("CHECK MODE")
    assert lines[3] == ("EFS: not inspected (a check run does not start the stopped instance); releases beyond "
                        "keep and staging leftovers are listed by a check run while the instance runs.")
    assert "Incomplete multipart uploads (billed, invisible in listings): 0, 0 parts, 0 bytes to abort" in lines
    assert lines[-1] == "Instance i-0abc: would be stopped (never terminated)"


def test_a_check_run_that_compared_on_the_instance_says_so() -> None:
    run = {"check_mode": True, "deployment": DEPLOYMENT, "request": {"dest": "data/reefguide/x", "mode": "replace"},
           "live": {"recorded": False, "counts": {"new": 0, "changed": 0, "removed": 0, "unchanged": 0,
                                                  "local_files": 3, "local_bytes": 9}},
           "compared_on_efs": {"exists": True, "counts": {"new": 1, "changed": 1, "removed": 4, "unchanged": 1}}}
    lines = stage_summary(run)
    assert "Plan (compared on the instance with what EFS holds at data/reefguide/x): 1 new, 1 changed, 4 removed, " \
           "1 unchanged files (3 files, 9 bytes locally); no record of what is live there" in lines
    assert any(line.startswith("CHECK MODE") and "compares src with what EFS holds" in line for line in lines)
    run.pop("compared_on_efs")
    lines = stage_summary(run)
    assert any(line.startswith("Plan: no record of what is live at data/reefguide/x") for line in lines)
    assert any(line.startswith("CHECK MODE") and "EFS was not inspected" in line for line in lines)


def test_teardown_check_without_the_instance_says_from_the_records_what_a_removal_takes() -> None:
    records = [{"dest": "data/reefguide/a", "release_id": "r1", "mode": "replace", "files": 3, "bytes": 300},
               {"dest": "data/reefguide/a/m", "release_id": "r2", "mode": "mirror", "files": 1, "bytes": 10},
               {"dest": "data/reefguide/b", "release_id": "r3", "mode": "merge", "files": 2, "bytes": 20,
                "pending": "run-9"},
               {"dest": "data/reefguide/c", "release_id": "r4", "mode": "replace", "files": 5, "bytes": 50}]
    lines = teardown_summary({"check_mode": True, "deployment": DEPLOYMENT, "s3": {}, "efs": None,
                              "records": records, "remove": ["data/reefguide/a", "data/reefguide/b",
                                                             "data/reefguide/c/x", "data/other"]})
    start = lines.index(next(line for line in lines if line.startswith("EFS: not inspected")))
    assert lines[start].endswith("; from the records of what is live, the removal would take:")
    assert lines[start + 1:start + 6] == [
        "  data/reefguide/a: 3 files, 300 bytes, would be kept as release r1, not deleted (rollback.yml brings "
        "it back)",
        "  data/reefguide/a/m: 1 files, 10 bytes, would be deleted",
        "  data/reefguide/b: 2 files, 20 bytes, would be kept as release r3, not deleted (rollback.yml brings "
        "it back) (its record is marked pending: EFS may differ)",
        "  data/reefguide/c/x: inside what is live at data/reefguide/c (release r4): not counted without the "
        "instance",
        "  data/other: no record of what is live there: what it holds is known only on EFS",
    ]


def test_the_filters_are_registered_under_their_names() -> None:
    assert set(FilterModule().filters()) == {"reefguide_stage_summary", "reefguide_teardown_summary",
                                             "reefguide_workers_summary", "reefguide_rollback_line"}


def worker(n: int, outcome: str) -> dict[str, Any]:
    return {"task": "arn:aws:ecs:ap-southeast-2:1:task/c/t%d" % n, "family": "f", "started_at": 1.0 + n,
            "outcome": outcome}


def test_the_summary_says_what_running_workers_saw_and_what_became_of_those_started_before() -> None:
    stage = dict(staged_run()["stage"], swap_method="in_place")
    exited = [worker(1, "exited"), worker(2, "exited")]
    restart = {"restart": "wait", "workers": exited, "msg": restart_message("wait", exited, 12.4, 600, False)}
    lines = stage_summary(staged_run(stage=stage, workers_restart=restart))
    seen = [line for line in lines if line.startswith("Workers: ")]
    assert seen == ["Workers: data/reefguide stayed the directory the workers mount and was updated in place: each "
                    "file changed in one rename (a running worker read the old or the new file, never none), every "
                    "directory they hold was kept, cache/ was there throughout; running workers read the new data "
                    "without a restart."]
    assert ("Workers started before the release (restart_workers=true): the 2 worker task(s) started before the "
            "release exited on their own within 12 s (t1, t2): every worker from now on starts on the data that is "
            "live now.") in lines
    # waited to the bound: says which still run, that they exit by themselves, and what force would cost
    mixed = [worker(1, "exited"), worker(2, "still_running")]
    line = restart_message("wait", mixed, 600.2, 600, False)
    assert line.startswith("1 of the 2 worker task(s) started before the release still ran after 600 s: t2. They "
                           "exit by themselves once idle"), line
    assert "restart_workers=force stops them now, but a job it had in progress is lost" in line
    # force: says they were stopped and that a busy one's job is lost until the expiry
    stopped = [worker(3, "stopped")]
    line = restart_message("force", stopped, 0, 600, False)
    assert line.startswith("stopped the 1 worker task(s) started before the release (t3)"), line
    assert "stays IN_PROGRESS until the job expiry marks it TIMED_OUT (about 2 h)" in line
    assert restart_message("wait", [], 0, 600, False).startswith("no worker task was running from before the release")
    would = restart_message("force", stopped, 0, 600, True)
    assert would == "would stop the 1 worker task(s) started before the release: t3"
    # the module failed (e.g. no right to list the tasks): said, and the release stands
    denied = {"failed": False, "msg": "AccessDenied: ecs:ListTasks"}
    failed = stage_summary(staged_run(stage=stage, workers_restart=denied))
    assert "Workers: restart_workers failed after the release, which stands: AccessDenied: ecs:ListTasks" in failed
    # skipped (restart_workers unset): nothing said
    quiet = stage_summary(staged_run(stage=stage, workers_restart={"skipped": True, "changed": False}))
    assert not any(line.startswith("Workers started before") or "restart_workers" in line for line in quiet)
    # a data package is swapped whole; nothing restarted, nothing said about a restart
    package = dict(staged_run()["stage"], swap_method="two_renames")
    lines = stage_summary(staged_run(stage=package, request=dict(REQUEST, dest="data/reefguide/adria/datapackages/M")))
    assert any("data/reefguide/adria/datapackages/M was swapped as a whole directory in two renames" in line
               for line in lines)
    assert not any(line.startswith("Workers started before") for line in lines)
    # rollback.yml prints the same lines through the filter
    rollback = FilterModule().filters()["reefguide_workers_summary"]({"swap_method": "in_place"}, "data/reefguide", {})
    assert rollback == seen


def test_records_that_efs_no_longer_agrees_with_are_named() -> None:
    dropped = {"records_dropped": ["data/reefguide/hand"]}
    for lines in (stage_summary(staged_run(**dropped)), teardown_summary(dict(dropped, deployment=DEPLOYMENT))):
        assert any(line.startswith("Records dropped, EFS changed there since their release") and
                   "data/reefguide/hand" in line for line in lines), lines
    assert not any(line.startswith("Records dropped") for line in stage_summary(staged_run()))


def test_a_rollback_says_only_what_it_did_and_offers_only_a_kept_release() -> None:
    assert rollback_line({"changed": True, "release_id": "r1", "previous_release_id": "r2"}, "data/x") == (
        "data/x: release r1 is live again (it replaced r2, which is kept: roll forward with -e release_id=r2)")
    # a second rollback finds it done: it says so, not "it replaced"
    assert rollback_line({"changed": False, "release_id": "r1", "previous_release_id": "r0"}, "data/x") == (
        "Nothing rolled back: release r1 is already live at data/x (put back by an earlier rollback). To go "
        "further back or forward, give -e release_id=<a kept release>; the newest kept is r0.")
    # nothing was live before: no "-e release_id=None" to copy
    line = rollback_line({"changed": True, "release_id": "r1", "previous_release_id": None}, "data/x")
    assert "None" not in line and "nothing to roll forward to" in line
    assert FilterModule().filters()["reefguide_rollback_line"] is rollback_line


def test_a_removal_of_released_data_says_it_is_kept_and_how_to_bring_it_back() -> None:
    efs = {"bytes_freed": 0, "pruned": [], "removed": [],
           "kept_as_release": [{"target": "data/reefguide/pkg", "release_id": "r7", "bytes": 1234}]}
    for check, verb in ((False, "kept"), (True, "would be kept")):
        lines = teardown_summary({"check_mode": check, "s3": {}, "efs": efs, "price_per_gb_month": 0.3,
                                  "deployment": {"instance_id": "i-1"}})
        assert ("data/reefguide/pkg %s as release r7 (1234 bytes), not deleted: ansible-playbook rollback.yml -e "
                "dest=data/reefguide/pkg puts it back, until a teardown's keep prunes it" % verb) in lines, lines


def test_every_release_a_stage_prunes_is_named() -> None:
    stage = dict(staged_run()["stage"], pruned=[{"release_id": "r0", "bytes": 2048, "target": "data/reefguide"}])
    lines = stage_summary(staged_run(stage=stage, keep=1))
    assert "Releases pruned (keep=1): r0 (2048 bytes freed)" in lines
    assert not [line for line in stage_summary(staged_run()) if line.startswith("Releases pruned")]


def test_releases_kept_for_running_workers_are_named_with_why_and_when_they_go() -> None:
    held = [{"target": "data/reefguide", "release_id": "r1", "retired_at": "2026-01-01T12:30:00Z"}]
    running = {"workers": [worker(1, "running"), worker(2, "running")], "oldest_started_at": 2.0}
    stage = dict(staged_run()["stage"], held=held, pruned=[])
    lines = stage_summary(staged_run(stage=stage, keep=0, workers_running=running))
    assert ("Releases kept beyond keep=0: r1 (data/reefguide): 2 worker task(s) still running started before they "
            "were retired and may hold their files open (deleting them would give those workers stale file handles "
            "on EFS); a later run prunes them once those workers are gone.") in lines
    # the workers could not be listed: everything of theirs beyond keep stays, and the rights that would tell
    denied = teardown_summary({"s3": {}, "keep": 0, "efs": {"held": held, "pruned": []},
                               "workers_running": {"failed": False, "msg": "AccessDenied: ecs:ListTasks"}})
    assert any(line.startswith("Releases kept beyond keep=0: r1 (data/reefguide): the running worker tasks could not "
                               "be listed (AccessDenied: ecs:ListTasks)") and "ecs:ListTasks, ecs:DescribeTasks" in line
               for line in denied), denied
    # nothing held: nothing said
    assert not any("kept beyond" in line for line in stage_summary(staged_run(stage=dict(stage, held=[]))))
