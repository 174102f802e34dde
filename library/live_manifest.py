#!/usr/bin/python
# reefguide-efs: what is live on EFS, remembered in the transfer bucket.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: live_manifest
short_description: Compare a local tree with what is live at an EFS destination, or record a release
description:
  - After each release, stage_data.yml records the manifest of what went live (path, size and
    SHA-256 of every file, and the release id) as a small object in the transfer bucket.
  - V(compared) reads that record and compares it with a local tree, so an identical re-run is
    recognised on the controller before anything is uploaded or the instance is started. Local
    SHA-256s come from the sync engine's checksum cache, so unchanged files are not read again.
  - V(present) records a release; it copies the manifest the push wrote for the run into the record.
  - V(absent) forgets the record (after a rollback, so that the next stage compares nothing and stages).
  - Runs on the controller.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  state:
    description: V(compared), V(present) or V(absent).
    type: str
    choices: [compared, present, absent]
    default: compared
  bucket:
    description: The transfer bucket.
    type: str
    required: true
  key:
    description: The record's key (from stage_request's C(live_manifest_key)).
    type: str
    required: true
  path:
    description: With V(compared), the local file or directory to compare.
    type: path
  mode:
    description:
      - With V(compared), the stage mode. Under V(merge) a file live but absent locally is no
        difference (merge keeps it).
    type: str
    choices: [replace, merge, mirror]
    default: replace
  source_key:
    description: With V(present), the manifest object written by the run's push.
    type: str
  release_id:
    description: With V(present), the release that went live.
    type: str
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Is this data already live?
  live_manifest:
    bucket: "{{ deployment.bucket }}"
    key: "{{ request.live_manifest_key }}"
    path: "{{ request.upload_path }}"
    mode: "{{ request.mode }}"
  delegate_to: localhost
  register: live
"""

RETURN = r"""
equal:
  description: With V(compared), whether the local tree is what is live (nothing to stage).
  returned: state=compared
  type: bool
recorded:
  description: Whether a record exists for the destination.
  returned: always
  type: bool
release_id:
  description: The live release id from the record.
  returned: when recorded
  type: str
new:
  description: Files present locally but not live (first 20).
  returned: state=compared
  type: list
changed_files:
  description: Files whose size or SHA-256 differ (first 20).
  returned: state=compared
  type: list
removed:
  description: Files live but not local (first 20; not a difference under merge).
  returned: state=compared
  type: list
counts:
  description: Numbers of new, changed, removed and unchanged files, and local files and bytes.
  returned: state=compared
  type: dict
"""

import json
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import (
    AWS_COMMON_ARGS,
    client_from_params,
    fail_aws,
    read_json_object,
    require_boto3,
)
from ansible.module_utils.reefguide.checksums import ChecksumCache, default_cache_path, local_sha256
from ansible.module_utils.reefguide.local_tree import Matcher, scan_source
from ansible.module_utils.reefguide.sync_common import LocalFileError


def read_record(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """The record, {} when there is none or it is unreadable (then the run stages)."""
    try:
        return read_json_object(s3, bucket, key) or {}
    except ValueError:
        return {}


def local_manifest(path: str) -> dict[str, tuple[int, str]]:
    """rel -> (size, sha256), unchanged files' SHA-256 from the checksum cache."""
    files, _empty, _warnings = scan_source(path, Matcher([]))
    cache = ChecksumCache(default_cache_path(path), path)
    out: dict[str, tuple[int, str]] = {}
    for rel, lf in files.items():
        out[rel] = (lf.size, local_sha256(lf, cache)[0])
    return out


def compare(module: AnsibleModule, s3: Any) -> None:
    p = module.params
    record = read_record(s3, p["bucket"], p["key"])
    try:
        local = local_manifest(p["path"])
    except LocalFileError as exc:
        module.fail_json(msg=str(exc))
    live = {rel: (e.get("size"), e.get("sha256")) for rel, e in (record.get("files") or {}).items()}
    new = sorted(r for r in local if r not in live)
    changed = sorted(r for r in local if r in live and live[r] != local[r])
    removed = sorted(r for r in live if r not in local)
    equal = bool(record) and not new and not changed and (p["mode"] == "merge" or not removed)
    module.exit_json(
        changed=False, equal=equal, recorded=bool(record), release_id=record.get("release_id"),
        new=new[:20], changed_files=changed[:20], removed=removed[:20],
        counts={"new": len(new), "changed": len(changed), "removed": len(removed),
                "unchanged": len(local) - len(new) - len(changed),
                "local_files": len(local), "local_bytes": sum(s for s, _ in local.values())},
    )


def record(module: AnsibleModule, s3: Any) -> None:
    p = module.params
    if not p["source_key"]:
        module.fail_json(msg="state=present needs source_key (the run's manifest object)")
    try:
        doc = json.loads(s3.get_object(Bucket=p["bucket"], Key=p["source_key"])["Body"].read())
    except Exception as exc:
        fail_aws(module, exc, "reading the run's manifest s3://%s/%s" % (p["bucket"], p["source_key"]))
    doc["release_id"] = p["release_id"]
    before = read_record(s3, p["bucket"], p["key"])
    if before.get("files") == doc.get("files") and before.get("release_id") == doc["release_id"]:
        module.exit_json(changed=False, recorded=True, release_id=doc["release_id"])
    if not module.check_mode:
        try:
            s3.put_object(Bucket=p["bucket"], Key=p["key"], Body=json.dumps(doc, sort_keys=True).encode(),
                          ServerSideEncryption="AES256", ContentType="application/json")
        except Exception as exc:
            fail_aws(module, exc, "recording the live manifest s3://%s/%s" % (p["bucket"], p["key"]))
    module.exit_json(changed=True, recorded=True, release_id=doc["release_id"])


def forget(module: AnsibleModule, s3: Any) -> None:
    p = module.params
    before = read_record(s3, p["bucket"], p["key"])
    if before and not module.check_mode:
        s3.delete_object(Bucket=p["bucket"], Key=p["key"])
    module.exit_json(changed=bool(before), recorded=False, release_id=before.get("release_id"))


def main() -> None:
    spec = dict(
        state=dict(type="str", default="compared", choices=["compared", "present", "absent"]),
        bucket=dict(type="str", required=True),
        key=dict(type="str", required=True, no_log=False),
        path=dict(type="path"),
        mode=dict(type="str", default="replace", choices=["replace", "merge", "mirror"]),
        source_key=dict(type="str", no_log=False),
        release_id=dict(type="str"),
    )
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[("state", "compared", ["path"])])
    require_boto3(module)
    s3 = client_from_params(module, "s3")
    try:
        if module.params["state"] == "compared":
            compare(module, s3)
        if module.params["state"] == "absent":
            forget(module, s3)
        record(module, s3)
    except Exception as exc:
        fail_aws(module, exc, "the live manifest s3://%s/%s" % (module.params["bucket"], module.params["key"]))


if __name__ == "__main__":
    main()
