"""status.yml: where a deployment stands, read without starting anything (instance, lock, what is live,
the transfer bucket's leftovers, EFS's metered size and cost), as text and as JSON (status_file)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from helpers import ROOT, make_tree, run_playbook
from lab import Lab

sys.path.insert(0, str(ROOT / "filter_plugins"))

from reefguide_status import status_lines, status_report  # noqa: E402

INVENTORY = ROOT / "inventory" / "lab.yml"
DEST = "data/reefguide/status-probe"
FILES = {"a.txt": "alpha\n", "sub/b.bin": "b" * 5000, "sub/c.csv": "c,1\n"}
LEFT = "reefguide-efs/runs/data%2Freefguide%2Fkilled-by-status-test/"


def status(lab: Lab, tmp_path: Path) -> tuple[str, dict]:
    out = tmp_path / "status.json"
    out.unlink(missing_ok=True)
    run = run_playbook(lab.env, INVENTORY, "status.yml", "-e", "status_file=%s" % out)
    assert run.returncode == 0, run.stdout[-4000:]
    return " ".join(run.stdout.split()), json.loads(out.read_text())["lab"]


def test_status_reads_everything_and_starts_nothing(lab: Lab, tmp_path: Path) -> None:
    staged = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % make_tree(tmp_path / "src", FILES),
                          "-e", "dest=%s" % DEST)
    assert staged.returncode == 0, staged.stdout[-4000:]
    sessions = lab.sessions_started()
    text, doc = status(lab, tmp_path)
    assert lab.sessions_started() == sessions and doc["instance"]["state"] == "stopped"  # no session, no start
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"
    live = {r["dest"]: r for r in doc["live"]}[DEST]
    assert (live["files"], live["bytes"]) == (3, sum(len(t) for t in FILES.values()))
    assert "Live at %s: release %s, 3 files, %d bytes (replace)" % (DEST, live["release_id"], live["bytes"]) in text
    assert doc["efs"]["bytes"] >= live["bytes"] and doc["efs"]["metered_at"]  # what EFS meters holds what we staged
    assert "Instance: stopped" in text and "WARNING" not in text

    # an interrupted run's traces: its lock (its process ended), its uploads, an incomplete multipart upload
    s3 = lab.client("s3")
    lock_key = "reefguide-efs/lock.json"
    lock = {"run_id": "20261207T000000-dead", "holder": "alice@laptop", "since": "2026-12-07T00:00:00Z",
            "purpose": "stage %s" % DEST, "pid": 4242, "ttl": 300, "started_instance": lab.instance_id,
            "ended": "2026-12-07T00:05:00Z: its ansible-playbook process (pid 4242) ended without releasing the lock"}
    s3.put_object(Bucket=lab.bucket, Key=lock_key, Body=json.dumps(lock).encode())
    s3.put_object(Bucket=lab.bucket, Key=LEFT + "a.txt", Body=b"x" * 1000)
    upload = s3.create_multipart_upload(Bucket=lab.bucket, Key=LEFT + "big.bin")["UploadId"]
    s3.upload_part(Bucket=lab.bucket, Key=LEFT + "big.bin", UploadId=upload, PartNumber=1, Body=b"y" * (5 << 20))
    try:
        text, doc = status(lab, tmp_path)
        assert doc["lock"]["stale"] and doc["lock"]["holder"] == "alice@laptop", doc["lock"]
        held = "Lock: held by alice@laptop for 20261207T000000-dead (stage %s, since 2026-12-07T00:00:00Z" % DEST
        assert held in text
        assert "STALE: 2026-12-07T00:05:00Z: its ansible-playbook process (pid 4242) ended without releasing the " \
               "lock. The next stage takes it over with -e break_lock=true, and stops the instance that run started" \
               in text
        bucket = doc["transfer_bucket"]
        assert bucket["run_uploads"]["objects"] >= 1 and bucket["multipart"]["uploads"] >= 1, bucket
        assert bucket["multipart"]["bytes"] >= 5 << 20
        assert re.search(r"Transfer bucket leftovers: \d+ objects, \d+ bytes from \d+ run\(s\) .*; \d+ incomplete "
                         r"multipart uploads, \d+ bytes; about \$\d+\.\d\d a month: ansible-playbook teardown.yml "
                         r"deletes them", text), text[-2000:]
        assert lab.sessions_started() == sessions

        # running with no live run holding the lock: nothing will stop it, and status says so
        s3.delete_object(Bucket=lab.bucket, Key=lock_key)
        lab.start_instance(wait_online=False)
        time.sleep(1.1)
        text, doc = status(lab, tmp_path)
        assert doc["instance"]["state"] == "running" and doc["unattended"] and doc["lock"] is None
        assert re.search(r"Instance: running, running for \d+ s \(since \S+\); WARNING: no run of ours holds the lock",
                         text), text[-2000:]
    finally:
        s3.delete_object(Bucket=lab.bucket, Key=lock_key)
        s3.abort_multipart_upload(Bucket=lab.bucket, Key=LEFT + "big.bin", UploadId=upload)
        s3.delete_object(Bucket=lab.bucket, Key=LEFT + "a.txt")
        lab.stop_instance()


def test_the_report_says_what_a_live_lock_a_pending_record_and_an_empty_bucket_mean() -> None:
    now = 1796600000.0
    beat = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30))
    run = {"stack_name": "s", "deployment": {"instance_id": "i-1", "bucket": "b", "efs_id": "fs-1"},
           "facts": {"instance": {"state": "running", "launch_time": "x", "running_seconds": 600},
                     "efs": {"bytes": 3 * 10**9, "standard_bytes": 3 * 10**9, "ia_bytes": 0, "metered_at": "t"}},
           "lock": {"run_id": "r", "holder": "bob@desk", "since": beat, "heartbeat": beat, "ttl": 300,
                    "purpose": "teardown"},
           "records": [{"dest": "data/reefguide", "release_id": "R", "files": 2, "bytes": 9, "mode": "replace",
                        "pending": "R2"}],
           "leftovers": {}, "efs_price": 0.30, "now": now}
    report = status_report(run)
    lines = status_lines(report)
    assert not report["unattended"] and not report["lock"]["stale"]  # a live run uses the instance
    assert "Instance: running, running for 10 min (since x)" in lines
    assert any(line.startswith("Lock: held by bob@desk for r (teardown") and "STALE" not in line for line in lines)
    assert ("Live at data/reefguide: release R, 2 files, 9 bytes (replace); run R2 was interrupted there before it "
            "recorded what it did: the next stage compares with what EFS holds") in lines
    assert lines[-2].endswith("about $0.00 a month")  # nothing left: nothing to delete
    assert "about $0.90 a month at the Standard price" in lines[-1]
