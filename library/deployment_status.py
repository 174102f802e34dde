#!/usr/bin/python
# reefguide-efs: the AWS-side facts of a deployment that status.yml reports, read without starting anything.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deployment_status
short_description: Read a ReefGuide deployment's instance state and EFS metered size, starting nothing
description:
  - The management instance's state, and since when it has been running (its launch time, which EC2 resets at
    every start from stopped).
  - The EFS file system's metered size (C(DescribeFileSystems) C(SizeInBytes)) in Standard and Infrequent
    Access. EFS updates it within about an hour of a change, so it may lag behind a stage that just ran.
  - Read-only; runs on the controller. status.yml puts it beside the lock, the records of what is live and
    the transfer bucket's leftovers.
version_added: "0.5.0"
author: reefguide-efs developers
options:
  instance_id:
    description: The management instance (deployment_info's C(instance_id)).
    type: str
    required: true
  efs_id:
    description: The EFS file system (deployment_info's C(efs_id)).
    type: str
    required: true
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Read the instance and EFS
  deployment_status:
    instance_id: "{{ reefguide_deployment.instance_id }}"
    efs_id: "{{ reefguide_deployment.efs_id }}"
  delegate_to: localhost
  register: status
"""

RETURN = r"""
instance:
  description: The instance's state, its launch time (ISO 8601, UTC) and how long it has been running (seconds;
    null unless running).
  returned: success
  type: dict
  sample: {"state": "running", "launch_time": "2026-12-07T09:00:00Z", "running_seconds": 5400}
efs:
  description: The metered size in bytes, in all and by storage class, and when EFS measured it (ISO 8601, UTC).
  returned: success
  type: dict
  sample: {"bytes": 2147483648, "standard_bytes": 1073741824, "ia_bytes": 1073741824,
           "metered_at": "2026-12-07T10:00:00Z"}
"""

import datetime
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import AWS_COMMON_ARGS, client_from_params, fail_aws, require_boto3


def iso(value: Any) -> Any:
    if isinstance(value, (int, float)):
        value = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def instance(module: AnsibleModule, iid: str) -> dict[str, Any]:
    try:
        found = client_from_params(module, "ec2").describe_instances(InstanceIds=[iid])["Reservations"]
    except Exception as exc:
        fail_aws(module, exc, "reading instance %s" % iid)
    inst = found[0]["Instances"][0]
    state, launched = inst["State"]["Name"], inst.get("LaunchTime")
    running = None
    if state == "running" and isinstance(launched, datetime.datetime):
        running = max(0, int(time.time() - launched.timestamp()))
    return {"state": state, "launch_time": iso(launched), "running_seconds": running}


def efs(module: AnsibleModule, fs_id: str) -> dict[str, Any]:
    try:
        fs = client_from_params(module, "efs").describe_file_systems(FileSystemId=fs_id)["FileSystems"][0]
    except Exception as exc:
        fail_aws(module, exc, "reading EFS file system %s" % fs_id)
    size = fs.get("SizeInBytes") or {}
    return {"bytes": int(size.get("Value") or 0), "standard_bytes": int(size.get("ValueInStandard") or 0),
            "ia_bytes": int(size.get("ValueInIA") or 0), "metered_at": iso(size.get("Timestamp"))}


def main() -> None:
    spec = dict(instance_id=dict(type="str", required=True), efs_id=dict(type="str", required=True))
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_boto3(module)
    module.exit_json(changed=False, instance=instance(module, module.params["instance_id"]),
                     efs=efs(module, module.params["efs_id"]))


if __name__ == "__main__":
    main()
