# Incomplete multipart uploads under a prefix of the transfer bucket: S3 keeps
# (and bills) their parts until they are completed or aborted, and no object
# listing shows them. A sync aborts its own when it fails or is interrupted;
# what a killed run (SIGKILL, a machine gone) leaves is found and aborted here,
# by teardown and by a stage's clean-up after a failure.

from __future__ import annotations

from typing import Any

from ansible.module_utils.reefguide.aws import error_code

FIRST = 20  # uploads named in a result


def incomplete_uploads(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every incomplete upload under prefix (ListMultipartUploads), with its
    parts and their bytes (ListParts)."""
    uploads = []
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for up in page.get("Uploads", []):
            parts, size = _parts(s3, bucket, up["Key"], up["UploadId"])
            uploads.append({"key": up["Key"], "upload_id": up["UploadId"], "initiated": str(up.get("Initiated", "")),
                            "parts": parts, "bytes": size})
    return uploads


def _parts(s3: Any, bucket: str, key: str, upload_id: str) -> tuple[int, int]:
    count = size = 0
    try:
        for page in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id):
            for part in page.get("Parts", []):
                count += 1
                size += int(part.get("Size") or 0)
    except Exception as exc:  # aborted meanwhile (by the run that owns it): nothing left to count
        if error_code(exc) != "NoSuchUpload":
            raise
    return count, size


def abort_uploads(s3: Any, bucket: str, uploads: list[dict[str, Any]]) -> None:
    for up in uploads:
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=up["key"], UploadId=up["upload_id"])
        except Exception as exc:  # already gone is what we wanted
            if error_code(exc) != "NoSuchUpload":
                raise


def uploads_summary(uploads: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uploads": len(uploads),
        "parts": sum(up["parts"] for up in uploads),
        "bytes": sum(up["bytes"] for up in uploads),
        "first": [{"key": up["key"], "initiated": up["initiated"], "parts": up["parts"], "bytes": up["bytes"]}
                  for up in uploads[:FIRST]],
    }
