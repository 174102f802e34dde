#!/usr/bin/python
# reefguide-efs: find a ReefGuide deployment's parts from its stack name.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deployment_info
short_description: Discover a ReefGuide deployment (instance, transfer bucket, EFS) from its CloudFormation stack
description:
  - Reads the stack output C(<slug>efnConnectionInfo), where the slug is the stack name lower-cased
    with every character outside C([a-z0-9]) removed, prefixed with C(n) if it then starts with a
    digit, and C(empty) if nothing is left. Its value is JSON with C(serviceInstanceId) and
    C(transferBucketName).
  - The EFS file system is the stack's one C(AWS::EFS::FileSystem) resource (O(efs_id) overrides).
  - Read-only; runs on the controller.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  stack_name:
    description: The CloudFormation stack name of the ReefGuide deployment.
    type: str
    required: true
  efs_id:
    description: Use this EFS file-system id instead of the stack's resource (needed if it has several).
    type: str
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Discover the deployment
  deployment_info:
    stack_name: reefguide-prod
    region: ap-southeast-2
    profile: reefguide-prod-admin
  delegate_to: localhost
  register: deployment
"""

RETURN = r"""
instance_id:
  description: The management instance.
  returned: success
  type: str
  sample: i-0123456789abcdef0
bucket:
  description: The transfer bucket.
  returned: success
  type: str
efs_id:
  description: The EFS file system.
  returned: success
  type: str
  sample: fs-0123456789abcdef0
output_key:
  description: The stack output that was read.
  returned: success
  type: str
  sample: reefguideprodefnConnectionInfo
stack_status:
  description: The stack's status.
  returned: success
  type: str
stack_id:
  description: The stack's ARN.
  returned: success
  type: str
region:
  description: The region the stack was read in.
  returned: success
  type: str
"""

import json
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import AWS_COMMON_ARGS, client_from_params, fail_aws, require_boto3
from ansible.module_utils.reefguide.stack import output_key

USABLE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE",
          "UPDATE_IN_PROGRESS", "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
          "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS"}


def describe_stack(module: AnsibleModule, cf: Any, name: str, region: str) -> dict[str, Any]:
    try:
        return cf.describe_stacks(StackName=name)["Stacks"][0]
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        if code == "ValidationError" and "does not exist" in message:
            module.fail_json(msg="stack %r does not exist in region %s: check the stack name (reefguide_stack_name) "
                                 "and the region (reefguide_region)%s" % (name, region, similar(cf, name)),
                             error_code=code)
        fail_aws(module, exc, "reading stack %s" % name)
    raise AssertionError("unreachable")


def similar(cf: Any, name: str) -> str:
    """'; stacks here: a, b' (best effort, never fails the error it decorates)."""
    try:
        names = [s["StackName"] for page in cf.get_paginator("list_stacks").paginate(
            StackStatusFilter=sorted(USABLE)) for s in page["StackSummaries"]]
    except Exception:
        return ""
    close = [n for n in names if "reef" in n.lower() or name.lower()[:4] in n.lower()] or names
    return "; stacks in this region: %s" % ", ".join(sorted(close)[:10]) if close else "; no stacks in this region"


def connection_info(module: AnsibleModule, stack: dict[str, Any], key: str) -> dict[str, str]:
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}
    if key not in outputs:
        module.fail_json(msg="stack %s has no output %s (the connection info of its management instance). "
                             "Outputs it has: %s. Is this a ReefGuide stack?"
                             % (stack["StackName"], key, ", ".join(sorted(outputs)) or "none"))
    try:
        info = json.loads(outputs[key])
    except ValueError as exc:
        module.fail_json(msg="output %s of stack %s is not JSON (%s): %r"
                         % (key, stack["StackName"], exc, outputs[key]))
    missing = [k for k in ("serviceInstanceId", "transferBucketName") if not isinstance(info, dict) or not info.get(k)]
    if missing:
        module.fail_json(msg="output %s of stack %s lacks %s: %r" % (key, stack["StackName"], ", ".join(missing),
                                                                      outputs[key]))
    return info


def file_system(module: AnsibleModule, cf: Any, name: str) -> str:
    ids = []
    try:
        for page in cf.get_paginator("list_stack_resources").paginate(StackName=name):
            ids += [r["PhysicalResourceId"] for r in page["StackResourceSummaries"]
                    if r["ResourceType"] == "AWS::EFS::FileSystem" and r.get("PhysicalResourceId")]
    except Exception as exc:
        fail_aws(module, exc, "listing the resources of stack %s" % name)
    if len(ids) != 1:
        module.fail_json(msg="stack %s has %s EFS file systems%s: say which with efs_id (reefguide_efs_id)"
                             % (name, len(ids) or "no", (" (%s)" % ", ".join(ids)) if ids else ""))
    return ids[0]


def main() -> None:
    spec = dict(stack_name=dict(type="str", required=True), efs_id=dict(type="str"))
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_boto3(module)
    name = module.params["stack_name"]
    cf = client_from_params(module, "cloudformation")
    region = cf.meta.region_name
    stack = describe_stack(module, cf, name, region)
    if stack["StackStatus"] not in USABLE:
        module.fail_json(msg="stack %s is %s, not usable: wait for it to finish, or fix it in CloudFormation "
                             "(usable: %s)" % (name, stack["StackStatus"], ", ".join(sorted(USABLE))),
                         stack_status=stack["StackStatus"])
    key = output_key(name)
    info = connection_info(module, stack, key)
    efs_id = module.params["efs_id"] or file_system(module, cf, name)
    module.exit_json(changed=False, instance_id=info["serviceInstanceId"], bucket=info["transferBucketName"],
                     efs_id=efs_id, output_key=key, stack_status=stack["StackStatus"], stack_id=stack["StackId"],
                     region=region)


if __name__ == "__main__":
    main()
