# The run summaries of stage_data.yml and teardown.yml, built from one dict of what the run did.
# Python rather than one long Jinja expression, so that every line of the summary is unit-tested
# (tests/test_summary.py) and reads top to bottom.

from __future__ import annotations

from typing import Any, Optional

from jinja2.filters import do_filesizeformat

GiB = 1024**3
GB = 1000**3


def _num(value: Any) -> Optional[float]:
    """A timestamp or size as Ansible hands it over (number, numeric string, or nothing)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _files(counts: Optional[dict[str, Any]], key: str) -> int:
    return int(((counts or {}).get(key) or {}).get("files") or 0)


def _bytes(counts: Optional[dict[str, Any]], key: str) -> int:
    return int(((counts or {}).get(key) or {}).get("bytes") or 0)


def timeline(t: dict[str, Any]) -> str:
    """Seconds from the start of the run; the upload and the instance start overlap, both shown."""
    t0 = _num(t.get("run_started")) or 0.0
    parts = []
    up0, up1 = _num(t.get("upload_started")), _num(t.get("upload_ended"))
    if up0 is not None and up1 is not None:
        parts.append("upload %.1f-%.1f" % (up0 - t0, up1 - t0))
    asked, start_seconds = _num(t.get("power_requested")), _num(t.get("power_seconds"))
    if asked is not None and start_seconds is not None:
        parts.append("instance start %.1f-%.1f" % (asked - t0, asked + start_seconds - t0))
    r0, r1 = _num(t.get("remote_started")), _num(t.get("remote_ended"))
    if r0 is not None and r1 is not None:
        parts.append("remote work %.1f-%.1f" % (r0 - t0, r1 - t0))
    stopped = _num(t.get("power_stopped"))
    if stopped is not None:
        parts.append("instance stopped at %.1f" % (stopped - t0))
    parts.append("end %.1f" % ((_num(t.get("now")) or t0) - t0))
    return ", ".join(parts)


def _instance_line(t: dict[str, Any], power: dict[str, Any]) -> Optional[str]:
    """What became of the instance, told from what the run itself did to it."""
    asked = _num(t.get("power_requested"))
    if asked is None:
        return None
    stopped = _num(t.get("power_stopped"))
    if stopped is not None:
        return "Instance: %d s from start request to stop" % round(stopped - asked)
    seconds = round((_num(t.get("now")) or asked) - asked)
    if power.get("kept_running"):
        return ("Instance: %d s since the start request; LEFT RUNNING: job %s, which changes what is live, may still "
                "run on it and a stop would cut it halfway. The next run waits for it; teardown.yml then stops the "
                "instance" % (seconds, power["kept_running"]))
    if power.get("started_by_run") is False:
        return "Instance: %d s since the start request (left running: it was running before)" % seconds
    if (power.get("restore") or {}).get("state_before") == "stopped":
        return "Instance: %d s from start request; it was already stopped when the run put it back" % seconds
    return "Instance: %d s since the start request; NOT stopped by this run: stop it with teardown.yml" % seconds


def _usage_line(usage: dict[str, Any], price: float) -> Optional[str]:
    if not usage:
        return None
    total = float(usage.get("bytes") or 0)
    areas = ", ".join("%s %s" % (name, do_filesizeformat(size, True))
                      for name, size in (usage.get("areas") or {}).items())
    return "EFS now holds %.3f GiB (%s), about $%.2f a month at $%.2f/GB-month%s" % (
        total / GiB, areas, total / GB * price, price,
        "" if usage.get("complete", True) else " (at least: the count stopped at its time budget)")


def _efs_read_line(pull: dict[str, Any]) -> Optional[str]:
    """What the pull read from EFS to tell changed files from unchanged ones (reads cost on EFS)."""
    read = pull.get("local_read")
    if not read:
        return None
    return ("Read from EFS to compare: %d files hashed (%d bytes) + the checksum cache (%d bytes); "
            "unchanged files are known by their size, mtime and inode" % (
                int(read.get("files") or 0), int(read.get("hashed_bytes") or 0),
                int(read.get("checksum_cache_bytes") or 0)))


def _release_line(run: dict[str, Any], stage: dict[str, Any], request: dict[str, Any]) -> str:
    line = "Release %s is live (previous: %s)." % (stage["release_id"], stage.get("previous_release_id") or "none")
    if stage.get("unchanged"):
        line = ("No new release: EFS already held this data at %s, so release %s stays live (previous: %s) and no "
                "kept release was pushed out." % (request.get("dest"), stage["release_id"],
                                                  stage.get("previous_release_id") or "none"))
    if not stage.get("previous_release_id"):
        return line + " There is no earlier release to roll back to."
    if int(run.get("keep", 1) or 0) == 0:
        return line + " keep=0: the previous release was not kept, so there is nothing to roll back to."
    return line + " Roll back with: ansible-playbook rollback.yml -l %s -e dest=%s" % (run.get("host"),
                                                                                    request.get("dest"))


# What the workers (their tasks' EFS volume has data/reefguide as its root) saw, by efs_release's swap_method.
_SEEN = {
    "in_place": "%s stayed the directory the workers mount and was updated in place: each file changed in "
                "one rename (a running worker read the old or the new file, never none), every directory they "
                "hold was kept, cache/ was there throughout; running workers read the new data without a restart",
    "two_renames": "%s was swapped as a whole directory in two renames (for one EFS round trip it did not "
                   "exist); workers open it by path, so their next open reads the new version",
    "exchange": "%s was swapped as a whole directory in one atomic exchange; workers open it by path, so their "
                "next open reads the new version",
    "rename": "%s did not exist before: it appeared whole, in one rename",
}


def held_line(held: list[dict[str, Any]], keep: Any, running: dict[str, Any]) -> Optional[str]:
    """Releases kept beyond keep because a running worker may hold their files (efs_release's held)."""
    if not held:
        return None
    names = ", ".join("%s (%s)" % (h.get("release_id"), h.get("target")) for h in held)
    if "workers" not in (running or {}):
        why = ("the running worker tasks could not be listed (%s), so every release of the workers' data beyond keep "
               "stays; a run that can list them (ecs:ListTasks, ecs:DescribeTasks) prunes them"
               % ((running or {}).get("msg") or "no answer"))
    else:
        why = ("%d worker task(s) still running started before they were retired and may hold their files open "
               "(deleting them would give those workers stale file handles on EFS); a later run prunes them once "
               "those workers are gone" % len(running["workers"]))
    return "Releases kept beyond keep=%s: %s: %s." % (keep, names, why)


def workers_summary(release: dict[str, Any], dest: str, restart: Optional[dict[str, Any]] = None) -> list[str]:
    """What running workers saw during the swap, and what became of those started before it (restart_workers)."""
    lines = []
    seen = _SEEN.get(release.get("swap_method") or "")
    if seen:
        lines.append("Workers: " + seen % dest + ".")
    restart = restart or {}
    if "workers" in restart:  # ecs_workers' result: the workers started before the release, waited for or stopped
        lines.append("Workers started before the release (restart_workers=%s): %s." % (
            "force" if restart.get("restart") == "force" else "true", restart.get("msg")))
    elif restart.get("msg") and not restart.get("skipped"):
        lines.append("Workers: restart_workers failed after the release, which stands: %s" % restart["msg"])
    return lines


def _outcome_line(run: dict[str, Any]) -> str:
    request = run.get("request") or {}
    if run.get("failure"):
        return "FAILED: %s" % (run["failure"].get("msg") or "")
    if run.get("nothing_to_do"):
        line = ("Nothing to do: %s already holds this data (release %s); nothing uploaded, the instance was "
                "not started." % (request.get("dest"), (run.get("live") or {}).get("release_id") or "?"))
        if run.get("lock_held"):
            # deployment_lock's refusal, "deployment is locked by run … since … (purpose). Wait for …"
            line += (" But the %s: if that run died, the instance it started may still be running; "
                     "ansible-playbook teardown.yml -e break_lock=true breaks the lock and stops it."
                     % run["lock_held"].split(". Wait for", 1)[0])
        return line
    what = request.get("upload_path")
    if request.get("src_kind") == "archive":
        what = "%s (archive, unpacked on the controller)" % run.get("src")
    return "%s %s -> EFS:%s (mode %s)" % ("Would stage" if run.get("check_mode") else "Staged",
                                          what, request.get("dest"), request.get("mode"))


def _live_after_failure(run: dict[str, Any]) -> Optional[str]:
    """After a failed stage: whether what is live at dest changed, as the remote part told it."""
    if not run.get("failure"):
        return None
    dest = (run.get("request") or {}).get("dest")
    stage = run.get("stage") or {}
    if not run.get("record_pending"):
        return "Live data at %s untouched: the run failed before its remote part." % dest
    changed = stage.get("live_changed")
    if changed is False:
        return "Live data at %s untouched: the run failed before its release." % dest
    pending = ("Its record is marked pending, so the next stage there compares against what EFS holds "
               "(staging either version again is safe).")
    if changed:
        return "The release happened: %s holds the new data, but the run failed after it. %s" % (dest, pending)
    return ("The release may have happened: the run lost the instance or its session during it. %s "
            "rollback.yml puts the previous release back." % pending)


def _plan_line(run: dict[str, Any]) -> Optional[str]:
    """What the controller's comparison with the record found (the record may not say what is live)."""
    live = run.get("live") or {}
    counts = live.get("counts")
    if not counts:
        return None
    request = run.get("request") or {}
    local = "%d files, %d bytes locally" % (counts["local_files"], counts["local_bytes"])
    on_efs = (run.get("compared_on_efs") or {}).get("counts")
    if on_efs:
        why = ("run %s was interrupted there before it recorded what it did" % live["pending"]
               if live.get("pending") else "no record of what is live there")
        return "Plan (compared on the instance with what EFS holds at %s): %d new, %d changed, %d removed, " \
               "%d unchanged files (%s); %s" % (request.get("dest"), on_efs["new"], on_efs["changed"],
                                               on_efs["removed"], on_efs["unchanged"], local, why)
    if live.get("pending"):
        return ("Plan: not known on the controller: run %s was interrupted at %s before it recorded what it did, "
                "so the record is not taken for what is live; every file is compared on the instance with what "
                "EFS holds (%s)" % (live["pending"], request.get("dest"), local))
    if not live.get("recorded"):
        removes = "" if request.get("mode") == "merge" else ("; mode %s removes there whatever src lacks"
                                                             % request.get("mode"))
        return ("Plan: no record of what is live at %s (never staged there, or its record was dropped): every "
                "file is compared on the instance with what EFS holds%s (%s)" % (request.get("dest"), removes, local))
    return "Plan: %d new, %d changed, %d removed, %d unchanged files (%s)" % (
        counts["new"], counts["changed"], counts["removed"], counts["unchanged"], local)


def _dropped_line(run: dict[str, Any]) -> list[str]:
    dropped = run.get("records_dropped") or []
    if not dropped:
        return []
    return ["Records dropped, EFS changed there since their release (by hand?): %s; the next stage of each "
            "compares on the instance" % ", ".join(dropped)]


def stage_summary(run: dict[str, Any]) -> list[str]:
    """The summary stage_data.yml prints, one line per fact."""
    dep, request = run.get("deployment") or {}, run.get("request") or {}
    stage, upload = run.get("stage") or {}, run.get("upload") or {}
    lines = ["Deployment %s: instance %s, transfer bucket %s, EFS %s" % (
        run.get("stack_name"), dep.get("instance_id", "?"), dep.get("bucket", "?"), dep.get("efs_id", "?"))]
    if run.get("check_mode") and run.get("compared_on_efs"):
        lines.append("CHECK MODE: nothing was changed. The instance was running and no record of what is live "
                     "could be trusted, so the plan compares src with what EFS holds (read-only).")
    elif run.get("check_mode"):
        lines.append("CHECK MODE: nothing was changed. The instance is not started by a check run, so EFS was "
                     "not inspected; the plan compares src with the record of what is live.")
    if run.get("failure") and _files(upload, "transferred") + _files(upload, "skipped"):
        lines.append("Uploads kept at s3://%s/%s: a re-run sends only what is missing; teardown.yml removes them"
                     % (dep.get("bucket"), request.get("run_prefix")))
    lines.append(_outcome_line(run))
    lines += [line for line in (_live_after_failure(run), _plan_line(run)) if line]
    if upload:
        lines.append("Upload: %d files / %d bytes transferred, %d skipped" % (
            _files(upload, "transferred"), _bytes(upload, "transferred"), _files(upload, "skipped")))
    if ((stage.get("steps") or {}).get("packages") or {}).get("changed"):
        lines.append("Instance: its python lacked boto3; python3-boto3 was installed (once: later runs find it)")
    pull = stage.get("pull") or {}
    if pull:
        # what the pull skipped was on EFS already: the live copy the staging area was made from
        # (or, for a mirror, the destination itself), so it did not travel
        lines.append("Pull on the instance: %d files / %d bytes transferred, %d files / %d bytes reused from "
                     "EFS, %d deleted" % (_files(pull, "transferred"), _bytes(pull, "transferred"),
                                          _files(pull, "skipped"), _bytes(pull, "skipped"), _files(pull, "deleted")))
        lines += [line for line in (_efs_read_line(pull),) if line]
    if stage.get("release_id"):
        lines.append(_release_line(run, stage, request))
    if stage.get("pruned"):
        lines.append("Releases pruned (keep=%s): %s" % (run.get("keep"), ", ".join(
            "%s (%d bytes freed)" % (p.get("release_id"), int(p.get("bytes") or 0)) for p in stage["pruned"])))
    held = held_line(stage.get("held") or [], run.get("keep"), run.get("workers_running") or {})
    if held:
        lines.append(held)
    lines += workers_summary(stage, request.get("dest") or "", run.get("workers_restart"))
    times = run.get("times") or {}
    lines += [line for line in (_instance_line(times, run.get("power") or {}),) if line]
    lines.append("Timeline (seconds from the start of the run): " + timeline(times))
    lines.extend(_dropped_line(run))
    usage = _usage_line(stage.get("usage") or {}, float(run.get("price_per_gb_month") or 0))
    if usage:
        lines.append(usage)
    return lines


def _efs_from_the_records(remove: list[str], records: list[dict[str, Any]]) -> list[str]:
    """A check run that could not reach EFS (the instance stopped): what each removal would take,
    as far as the records of what is live tell (they list every released file with its size)."""
    lines = ["EFS: not inspected (a check run does not start the stopped instance); releases beyond keep and "
             "staging leftovers are listed by a check run while the instance runs%s" % (
                 "; from the records of what is live, the removal would take:" if remove else ".")]
    for path in remove:
        inside = sorted((r for r in records if r.get("dest") == path or str(r.get("dest")).startswith(path + "/")),
                        key=lambda r: r["dest"])
        above = [r for r in records if path.startswith(str(r.get("dest")) + "/")]
        for r in inside:
            released = r.get("release_id") and r.get("mode") != "mirror"
            lines.append("  %s: %d files, %d bytes, %s%s" % (
                r["dest"], int(r.get("files") or 0), int(r.get("bytes") or 0),
                ("would be kept as release %s, not deleted (rollback.yml brings it back)" % r["release_id"])
                if released else "would be deleted",
                " (its record is marked pending: EFS may differ)" if r.get("pending") else ""))
        if not inside:
            lines.append("  %s: %s" % (path, (
                "inside what is live at %s (release %s): not counted without the instance" % (
                    above[0]["dest"], above[0].get("release_id"))) if above else
                "no record of what is live there: what it holds is known only on EFS"))
    return lines


def teardown_summary(run: dict[str, Any]) -> list[str]:
    """The summary teardown.yml prints."""
    check = bool(run.get("check_mode"))
    s3, efs = run.get("s3") or {}, run.get("efs")
    price = float(run.get("price_per_gb_month") or 0)
    lines = ["CHECK MODE: nothing was changed; listed is what would go."] if check else []
    lines.append("Transfer bucket: %d objects, %d bytes %s" % (
        int(s3.get("deleted") or 0), int(s3.get("bytes") or 0), "to delete" if check else "deleted"))
    multipart = s3.get("multipart") or {}
    lines.append("Incomplete multipart uploads (billed, invisible in listings): %d, %d parts, %d bytes %s" % (
        int(multipart.get("uploads") or 0), int(multipart.get("parts") or 0), int(multipart.get("bytes") or 0),
        "to abort" if check else "aborted"))
    if efs:
        freed = int(efs.get("bytes_freed") or 0)
        lines.append("EFS: %d bytes %s (%.2f GiB, about $%.2f a month saved at $%.2f/GB-month); releases pruned: %s;"
                     " paths removed: %s" % (
                         freed, "to free" if check else "freed", freed / GiB, freed / GB * price, price,
                         [p.get("release_id", "?") for p in efs.get("pruned") or []],
                         [r.get("path") for r in efs.get("removed") or []]))
        held = held_line(efs.get("held") or [], run.get("keep"), run.get("workers_running") or {})
        if held:
            lines.append(held)
        for kept in efs.get("kept_as_release") or []:
            lines.append("%s %s as release %s (%d bytes), not deleted: ansible-playbook rollback.yml -e dest=%s "
                         "puts it back, until a teardown's keep prunes it" % (
                             kept.get("target"), "would be kept" if check else "kept", kept.get("release_id"),
                             int(kept.get("bytes") or 0), kept.get("target")))
    else:
        lines.extend(_efs_from_the_records(run.get("remove") or [], run.get("records") or []))
    lines.extend(_dropped_line(run))
    lines.append("Instance %s: %s" % ((run.get("deployment") or {}).get("instance_id"),
                                      "would be stopped (never terminated)" if check else "stopped (never terminated)"))
    return lines


def rollback_line(rollback: dict[str, Any], dest: str) -> str:
    """What rollback.yml says it did: only what it did, and a roll-forward only to a release that is kept."""
    live, replaced = rollback.get("release_id") or "?", rollback.get("previous_release_id")
    if not rollback.get("changed"):
        return ("Nothing rolled back: release %s is already live at %s (put back by an earlier rollback). To go "
                "further back or forward, give -e release_id=<a kept release>%s." % (
                    live, dest, ("; the newest kept is %s" % replaced) if replaced else ""))
    if not replaced:
        return "%s: release %s is live again; nothing was live before it, so there is nothing to roll forward to." % (
            dest, live)
    return "%s: release %s is live again (it replaced %s, which is kept: roll forward with -e release_id=%s)" % (
        dest, live, replaced, replaced)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"reefguide_stage_summary": stage_summary, "reefguide_teardown_summary": teardown_summary,
                "reefguide_workers_summary": workers_summary, "reefguide_rollback_line": rollback_line}
