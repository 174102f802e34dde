# reefguide-efs: status.yml's report, built from what it read (unit-tested in tests/test_status.py).

from __future__ import annotations

import calendar
import time
from typing import Any, Optional

GiB = 1024**3
GB = 1000**3
S3_PRICE_PER_GB_MONTH = 0.025  # S3 Standard in ap-southeast-2, first 50 TB (a setting: reefguide_s3_price_per_gb_month)


def _epoch(stamp: Any) -> Optional[float]:
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    return "%.1f h" % (seconds / 3600.0)


def lock_state(lock: dict[str, Any], now: float) -> Optional[dict[str, Any]]:
    """The lock as status reports it: holder, purpose, age, and whether it is stale (no heartbeat for its
    ttl, or its holder's process ended without releasing it)."""
    if not lock:
        return None
    beat = _epoch(lock.get("heartbeat"))
    stale = bool(lock.get("ended")) or beat is None or now - beat > float(lock.get("ttl") or 300)
    return {"holder": lock.get("holder"), "run_id": lock.get("run_id"), "purpose": lock.get("purpose"),
            "since": lock.get("since"), "age_seconds": (now - _epoch(lock["since"])) if _epoch(lock.get("since"))
            else None, "stale": stale, "ended": lock.get("ended"),
            "started_instance": lock.get("started_instance")}


def status_report(run: dict[str, Any]) -> dict[str, Any]:
    """What status.yml knows, as one document (its JSON form, and what the text lines are made of)."""
    now = float(run.get("now") or time.time())
    facts = run.get("facts") or {}
    inst, efs = facts.get("instance") or {}, facts.get("efs") or {}
    lock = lock_state(run.get("lock") or {}, now)
    runs = run.get("leftovers") or {}
    multipart = runs.get("multipart") or {}
    efs_price, s3_price = float(run.get("efs_price") or 0), float(run.get("s3_price") or S3_PRICE_PER_GB_MONTH)
    leftover_bytes = int(runs.get("bytes") or 0) + int(multipart.get("bytes") or 0)
    return {
        "stack_name": run.get("stack_name"),
        "deployment": {k: (run.get("deployment") or {}).get(k) for k in ("instance_id", "bucket", "efs_id", "region")},
        "instance": inst, "lock": lock,
        "unattended": inst.get("state") == "running" and not (lock and not lock["stale"]),
        "live": sorted(run.get("records") or [], key=lambda r: r.get("dest") or ""),
        "transfer_bucket": {"run_uploads": {"objects": int(runs.get("deleted") or 0),
                                            "bytes": int(runs.get("bytes") or 0),
                                            "runs": sorted((runs.get("prefixes") or {}).keys())},
                            "multipart": {"uploads": int(multipart.get("uploads") or 0),
                                          "bytes": int(multipart.get("bytes") or 0)},
                            "monthly_usd": round(leftover_bytes / GB * s3_price, 2)},
        "efs": dict(efs, monthly_usd=round(int(efs.get("bytes") or 0) / GB * efs_price, 2)),
    }


def status_lines(report: dict[str, Any]) -> list[str]:
    """The report as the lines an operator reads."""
    inst, lock = report["instance"], report["lock"]
    lines = ["Deployment %s: instance %s, transfer bucket %s, EFS %s" % (
        report["stack_name"], report["deployment"].get("instance_id"), report["deployment"].get("bucket"),
        report["deployment"].get("efs_id"))]
    state = "Instance: %s" % inst.get("state")
    if inst.get("state") == "running":
        state += ", running for %s (since %s)" % (_age(inst.get("running_seconds")), inst.get("launch_time"))
    if report["unattended"]:
        state += ("; WARNING: no run of ours holds the lock, so nothing will stop it: ansible-playbook teardown.yml "
                  "stops it (it never stops an instance a live run uses)")
    lines.append(state)
    if not lock:
        lines.append("Lock: free")
    else:
        line = "Lock: held by %s for %s (%s, since %s, %s old)" % (
            lock["holder"], lock["run_id"], lock["purpose"], lock["since"], _age(lock["age_seconds"]))
        if lock["stale"]:
            line += ("; STALE: %s. The next stage takes it over with -e break_lock=true"
                     % (lock["ended"] or "its heartbeat stopped, so its run is gone"))
            if lock.get("started_instance"):
                line += ", and stops the instance that run started"
        lines.append(line)
    if not report["live"]:
        lines.append("Live: no record of anything staged")
    for rec in report["live"]:
        line = "Live at %s: release %s, %d files, %d bytes (%s)" % (
            rec.get("dest"), rec.get("release_id"), int(rec.get("files") or 0), int(rec.get("bytes") or 0),
            rec.get("mode") or "?")
        if rec.get("pending"):
            line += "; run %s was interrupted there before it recorded what it did: the next stage compares " \
                    "with what EFS holds" % rec["pending"]
        lines.append(line)
    bucket = report["transfer_bucket"]
    uploads, multipart = bucket["run_uploads"], bucket["multipart"]
    lines.append("Transfer bucket leftovers: %d objects, %d bytes from %d run(s) (kept after a failed stage so the "
                 "re-run sends only what is missing); %d incomplete multipart uploads, %d bytes; about $%.2f a "
                 "month%s" % (uploads["objects"], uploads["bytes"], len(uploads["runs"]), multipart["uploads"],
                              multipart["bytes"], bucket["monthly_usd"],
                              ": ansible-playbook teardown.yml deletes them" if uploads["objects"] or
                              multipart["uploads"] else ""))
    efs = report["efs"]
    lines.append("EFS: %.3f GiB metered (%.3f GiB Standard, %.3f GiB Infrequent Access) at %s, about $%.2f a month "
                 "at the Standard price; EFS updates this within about an hour of a change" % (
                     int(efs.get("bytes") or 0) / GiB, int(efs.get("standard_bytes") or 0) / GiB,
                     int(efs.get("ia_bytes") or 0) / GiB, efs.get("metered_at"), efs["monthly_usd"]))
    return lines


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"reefguide_status_report": status_report, "reefguide_status_lines": status_lines}
