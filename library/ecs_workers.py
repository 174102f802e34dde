#!/usr/bin/python
# reefguide-efs: restart a ReefGuide deployment's workers (a new ECS deployment of each worker service).

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ecs_workers
short_description: Restart the worker services of a ReefGuide stack with a new ECS deployment
description:
  - Finds the stack's C(AWS::ECS::Service) resources (the ReefGuide and ADRIA workers) and asks ECS for
    a new deployment of each (C(UpdateService) with C(forceNewDeployment)). ECS replaces the running
    tasks; each new task mounts EFS afresh, so it starts on the data that is live now and with its
    in-memory state (loaded layers, open files) rebuilt.
  - Not needed to make a release of C(data/reefguide) visible (efs_release swaps it in place, and
    running workers read the new files), but useful when the workers keep what they read in memory,
    or after a release of a destination they had open.
  - Runs on the controller after the release. In check mode it only lists the services it would restart.
version_added: "0.3.0"
author: reefguide-efs developers
options:
  stack_name:
    description: The CloudFormation stack name of the ReefGuide deployment.
    type: str
    required: true
  services:
    description: Restart only these services (their names); default every worker service of the stack.
    type: list
    elements: str
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Restart the workers after the release
  ecs_workers:
    stack_name: reefguide-prod
    region: ap-southeast-2
  delegate_to: localhost
  register: restarted
"""

RETURN = r"""
services:
  description: >-
    The services restarted (in check mode, those that would be), each with its cluster, name, ARN, the
    primary deployment before, and the new one (null in check mode).
  returned: success
  type: list
  elements: dict
  sample:
    - cluster: reefguide-prod-cluster
      service: reefguide-worker
      arn: arn:aws:ecs:ap-southeast-2:123456789012:service/reefguide-prod-cluster/reefguide-worker
      deployment_before: ecs-svc/1234567890
      deployment: ecs-svc/2345678901
msg:
  description: One line saying what was restarted.
  returned: always
  type: str
"""

from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import AWS_COMMON_ARGS, client_from_params, fail_aws, require_boto3


def worker_services(module: AnsibleModule, cf: Any, stack: str) -> list[dict[str, str]]:
    """The stack's ECS services: cluster and name from each one's ARN
    (arn:aws:ecs:<region>:<account>:service/<cluster>/<name>)."""
    found = []
    try:
        for page in cf.get_paginator("list_stack_resources").paginate(StackName=stack):
            for res in page["StackResourceSummaries"]:
                arn = res.get("PhysicalResourceId") or ""
                if res["ResourceType"] == "AWS::ECS::Service" and ":service/" in arn:
                    cluster, _, name = arn.split(":service/", 1)[1].partition("/")
                    found.append({"cluster": cluster, "service": name, "arn": arn})
    except Exception as exc:
        fail_aws(module, exc, "listing the resources of stack %s" % stack)
    return sorted(found, key=lambda s: s["service"])


def primary(service: dict[str, Any]) -> Optional[str]:
    return next((d["id"] for d in service.get("deployments", []) if d.get("status") == "PRIMARY"), None)


def restart(module: AnsibleModule, ecs: Any, svc: dict[str, str]) -> dict[str, Any]:
    try:
        before = ecs.describe_services(cluster=svc["cluster"], services=[svc["service"]])["services"]
        out = dict(svc, deployment_before=primary(before[0]) if before else None, deployment=None)
        if not module.check_mode:
            updated = ecs.update_service(cluster=svc["cluster"], service=svc["service"], forceNewDeployment=True)
            out["deployment"] = primary(updated["service"])
    except Exception as exc:
        fail_aws(module, exc, "restarting ECS service %s in cluster %s" % (svc["service"], svc["cluster"]))
    return out


def main() -> None:
    spec = dict(stack_name=dict(type="str", required=True), services=dict(type="list", elements="str"))
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_boto3(module)
    stack = module.params["stack_name"]
    services = worker_services(module, client_from_params(module, "cloudformation"), stack)
    wanted = module.params["services"]
    if wanted:
        unknown = sorted(set(wanted) - {s["service"] for s in services})
        if unknown:
            module.fail_json(msg="stack %s has no worker service %s; it has: %s" % (
                stack, ", ".join(unknown), ", ".join(s["service"] for s in services) or "none"))
        services = [s for s in services if s["service"] in wanted]
    if not services:
        module.fail_json(msg="stack %s has no AWS::ECS::Service resources: no workers to restart "
                             "(leave restart_workers unset for this deployment)" % stack)
    ecs = client_from_params(module, "ecs")
    done = [restart(module, ecs, svc) for svc in services]
    module.exit_json(changed=True, services=done, msg="%s a new deployment of %s" % (
        "would start" if module.check_mode else "started", ", ".join(s["service"] for s in done)))


if __name__ == "__main__":
    main()
