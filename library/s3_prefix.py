#!/usr/bin/python
# reefguide-efs: remove a run's objects from the transfer bucket.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: s3_prefix
short_description: Delete every object under a prefix of the transfer bucket
description:
  - Removes a run's upload prefix after staging (the transfer bucket is meant to be transient),
    or every run prefix left behind, for teardown.
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
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import AWS_COMMON_ARGS, client_from_params, fail_aws, require_boto3


def main() -> None:
    spec = dict(
        bucket=dict(type="str", required=True),
        prefix=dict(type="str", required=True),
        keep=dict(type="list", elements="str", default=[]),
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
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=p["bucket"], Prefix=prefix):
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
    module.exit_json(changed=bool(keys), deleted=len(keys), bytes=total, prefixes=groups,
                     diff={"before": "".join("%s\n" % k for k in keys[:50]), "after": ""})


if __name__ == "__main__":
    main()
