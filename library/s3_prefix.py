#!/usr/bin/python
# reefguide-efs: remove a run's objects from the transfer bucket.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: s3_prefix
short_description: Delete every object and abort every incomplete multipart upload under a prefix of the transfer bucket
description:
  - Removes a run's upload prefix after staging (the transfer bucket is meant to be transient),
    or every run prefix left behind, for teardown.
  - Also aborts the incomplete multipart uploads under the prefix (O(multipart_uploads)), which S3
    bills for and no object listing shows (a killed upload leaves them), counting their parts and bytes.
  - Only keys under O(prefix) are touched; the prefix must not be empty or C(/).
  - Runs on the controller. Check mode lists what would go, with sizes.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  bucket:
    description: The transfer bucket.
    type: str
    required: true
  prefix:
    description: The prefix to empty (e.g. C(reefguide-efs/runs/<dest key>/)).
    type: str
    required: true
  objects:
    description: Delete the objects. V(false) with O(multipart_uploads) only aborts incomplete uploads
      (a failed stage keeps its objects for the re-run, but the engine never resumes a multipart upload).
    type: bool
    default: true
  multipart_uploads:
    description: Abort the incomplete multipart uploads under O(prefix) (ListMultipartUploads, ListParts,
      AbortMultipartUpload); those under O(keep) are left alone too.
    type: bool
    default: true
  keep:
    description: Sub-prefixes directly under O(prefix) to leave alone (e.g. a run still in progress).
    type: list
    elements: str
    default: []
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Delete this run's uploads
  s3_prefix:
    bucket: "{{ deployment.bucket }}"
    prefix: "{{ request.run_prefix }}"
  delegate_to: localhost
"""

RETURN = r"""
deleted:
  description: Number of objects deleted (or to delete, in check mode).
  returned: always
  type: int
bytes:
  description: Their total size.
  returned: always
  type: int
prefixes:
  description: The first-level sub-prefixes touched, with object counts and bytes.
  returned: always
  type: dict
multipart:
  description: The incomplete multipart uploads aborted (or to abort, in check mode).
  returned: always
  type: dict
  contains:
    uploads: {description: how many, type: int}
    parts: {description: their parts (ListParts), type: int}
    bytes: {description: the parts' bytes, type: int}
    first: {description: "the first 20: key, initiated, parts, bytes", type: list}
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import AWS_COMMON_ARGS, client_from_params, fail_aws, require_boto3
from ansible.module_utils.reefguide.multipart import abort_uploads, incomplete_uploads, uploads_summary


def main() -> None:
    spec = dict(
        bucket=dict(type="str", required=True),
        prefix=dict(type="str", required=True),
        keep=dict(type="list", elements="str", default=[]),
        objects=dict(type="bool", default=True),
        multipart_uploads=dict(type="bool", default=True),
    )
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_boto3(module)
    p = module.params
    prefix = p["prefix"].lstrip("/")
    if not prefix.strip("/"):
        module.fail_json(msg="refusing to empty the whole bucket: give a non-empty prefix")
    if not prefix.endswith("/"):
        prefix += "/"
    keep = tuple(prefix + k.strip("/") + "/" for k in p["keep"])
    s3 = client_from_params(module, "s3")
    keys: list[str] = []
    total = 0
    groups: dict[str, dict[str, int]] = {}
    uploads: list[dict[str, Any]] = []
    try:
        if p["multipart_uploads"]:
            uploads = [up for up in incomplete_uploads(s3, p["bucket"], prefix)
                       if not (keep and up["key"].startswith(keep))]
            if not module.check_mode:
                abort_uploads(s3, p["bucket"], uploads)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=p["bucket"], Prefix=prefix) if p["objects"] else []
        for page in pages:
            for obj in page.get("Contents", []):
                if keep and obj["Key"].startswith(keep):
                    continue
                keys.append(obj["Key"])
                total += obj["Size"]
                group = obj["Key"][len(prefix):].split("/", 1)[0]
                g = groups.setdefault(group, {"objects": 0, "bytes": 0})
                g["objects"] += 1
                g["bytes"] += obj["Size"]
        if not module.check_mode:
            for i in range(0, len(keys), 1000):
                batch: Any = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
                resp = s3.delete_objects(Bucket=p["bucket"], Delete=batch)
                if resp.get("Errors"):
                    err = resp["Errors"][0]
                    module.fail_json(msg="deleting s3://%s/%s failed: %s: %s (%d errors)"
                                     % (p["bucket"], err.get("Key"), err.get("Code"), err.get("Message"),
                                        len(resp["Errors"])))
    except Exception as exc:
        fail_aws(module, exc, "emptying s3://%s/%s" % (p["bucket"], prefix))
    module.exit_json(changed=bool(keys or uploads), deleted=len(keys), bytes=total, prefixes=groups,
                     multipart=uploads_summary(uploads),
                     diff={"before": "".join("%s\n" % k for k in keys[:50]), "after": ""})


if __name__ == "__main__":
    main()
