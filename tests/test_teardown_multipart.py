"""Incomplete multipart uploads left in the transfer bucket (a stage killed
mid-upload: SIGKILL, a machine gone) are billed and invisible in object
listings. teardown.yml finds those under the run prefixes, counts their
parts and bytes, aborts them (lists them only, with --check) and says so in
its summary; an upload elsewhere in the bucket is not its business."""

from __future__ import annotations

import json
import re
import subprocess

from helpers import ROOT, VENV_BIN, ansible_env, run_playbook
from lab import Lab

INVENTORY = ROOT / "inventory" / "lab.yml"
MiB = 1024 * 1024


def leave_upload(lab: Lab, key: str, parts: int) -> str:
    """A multipart upload with `parts` parts of 5 MiB, never completed."""
    s3 = lab.client("s3")
    upload_id = s3.create_multipart_upload(Bucket=lab.bucket, Key=key)["UploadId"]
    for n in range(1, parts + 1):
        s3.upload_part(Bucket=lab.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=b"x" * (5 * MiB))
    return upload_id


def uploads(lab: Lab) -> list[str]:
    return [u["Key"] for u in lab.client("s3").list_multipart_uploads(Bucket=lab.bucket).get("Uploads", [])]


def multipart_line(out: str) -> tuple[int, int, int, str]:
    """The summary's line (the YAML callback may wrap it)."""
    m = re.search(r"Incomplete multipart uploads \(billed, invisible in listings\): (\d+), (\d+) parts, (\d+) bytes "
                  r"(aborted|to abort)", re.sub(r"\s+", " ", out))
    assert m, out[-3000:]
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)


def test_teardown_finds_and_aborts_a_left_multipart_upload(lab: Lab) -> None:
    left = "reefguide-efs/runs/data%2Freefguide%2Fkilled/big.bin"
    elsewhere = "someone-else/upload.bin"
    leave_upload(lab, left, 2)
    other = leave_upload(lab, elsewhere, 1)
    try:
        check = run_playbook(lab.env, INVENTORY, "teardown.yml", "--check")
        assert check.returncode == 0, check.stdout[-3000:]
        assert multipart_line(check.stdout) == (1, 2, 10 * MiB, "to abort")
        assert sorted(uploads(lab)) == sorted([left, elsewhere])  # check mode aborts nothing

        real = run_playbook(lab.env, INVENTORY, "teardown.yml")
        assert real.returncode == 0, real.stdout[-3000:]
        assert multipart_line(real.stdout) == (1, 2, 10 * MiB, "aborted")
        assert uploads(lab) == [elsewhere]
        assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"
    finally:
        lab.client("s3").abort_multipart_upload(Bucket=lab.bucket, Key=elsewhere, UploadId=other)


def test_the_lifecycle_rule_the_readme_recommends_is_taken_by_s3_as_written(lab: Lab) -> None:
    """README, AWS rights: the aws CLI command as written, with iam/transfer-bucket-lifecycle.json."""
    put = subprocess.run([str(VENV_BIN / "aws"), "s3api", "put-bucket-lifecycle-configuration", "--bucket", lab.bucket,
                          "--lifecycle-configuration", "file://iam/transfer-bucket-lifecycle.json"],
                         cwd=ROOT, env=ansible_env(lab.env), capture_output=True, text=True)
    s3 = lab.client("s3")
    try:
        assert put.returncode == 0, put.stderr
        rules = s3.get_bucket_lifecycle_configuration(Bucket=lab.bucket)["Rules"]
    finally:
        s3.delete_bucket_lifecycle(Bucket=lab.bucket)
    assert rules == json.loads((ROOT / "iam" / "transfer-bucket-lifecycle.json").read_text())["Rules"]
    assert rules[0]["Filter"] == {"Prefix": "reefguide-efs/"}  # the project's uploads only
