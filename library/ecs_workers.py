#!/usr/bin/python
# reefguide-efs: after a release, let the ReefGuide workers that started before it go (wait, or stop them).

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ecs_workers
short_description: Wait for, or stop, the ReefGuide worker tasks started before a release
description:
  - ReefGuide's workers are standalone ECS tasks that the capacity manager starts with C(RunTask) when jobs
    wait; each exits by itself after some minutes idle, and the next one mounts EFS afresh. They are not
    services, and this module never touches a service (the stack's two, the capacity manager and the web API,
    run one task each; a new deployment of either takes the API down or makes the capacity manager forget its
    workers).
  - Finds the stack's cluster and task definitions from its resources, lists the cluster's running tasks, and
    takes as workers those that run one of the stack's task definitions (by family) and were not started by a
    service (no C(service:) group, no C(ecs-svc/) startedBy), started before O(started_before).
  - With O(restart=wait) it waits, up to O(wait_timeout) seconds, for them to exit on their own, and reports those
    still running; no job is lost. With O(restart=force) it stops them now (C(StopTask)); a job one of them had in
    progress is lost (ReefGuide never reassigns it; it times out after about 2 h).
  - Not needed to make a release of C(data/reefguide) visible (efs_release swaps it in place, and running workers
    read the new files), but useful when workers keep what they read in memory.
  - Runs on the controller after the release and after the instance is put back. In check mode it only lists the
    workers it would wait for or stop.
version_added: "0.3.0"
author: reefguide-efs developers
options:
  stack_name:
    description: The CloudFormation stack name of the ReefGuide deployment.
    type: str
    required: true
  restart:
    description:
      - V(wait) for the workers started before the release to exit by themselves, V(force) to stop them, or
        V(none) to only list the running workers and say when the oldest started (C(oldest_started_at)); a
        prune keeps the releases retired after it (C(efs_release) O(workers_since)). With V(none) a stack
        without an ECS cluster has no workers.
    type: str
    choices: [wait, force, none]
    default: wait
  started_before:
    description: Epoch seconds; only workers started before it are waited for or stopped. Default the module's start.
    type: float
  wait_timeout:
    description: With V(wait), the most seconds to wait; the workers still running then are reported, not stopped.
    type: int
    default: 900
  poll_interval:
    description: Seconds between two looks at the workers while waiting.
    type: float
    default: 5
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Wait for the workers started before the release to exit on their own
  ecs_workers:
    stack_name: reefguide-prod
    region: ap-southeast-2
  delegate_to: localhost
  register: workers
"""

RETURN = r"""
cluster:
  description: The stack's ECS cluster.
  returned: success
  type: str
workers:
  description: >-
    The worker tasks started before the release, each with its ARN, task-definition family, start time
    (epoch seconds) and outcome (exited, still_running, stopped; would_wait or would_stop in check mode).
  returned: success
  type: list
  elements: dict
  sample:
    - task: arn:aws:ecs:ap-southeast-2:123456789012:task/reefguide-prod-cluster/0123456789abcdef
      family: reefguidejobsystemADRIAMODELRUNtaskdef1A2B3C4D
      started_at: 1767225600.0
      outcome: exited
restart:
  description: The O(restart) asked for.
  returned: success
  type: str
oldest_started_at:
  description: When the oldest of O(workers) started (epoch seconds); null when none runs.
  returned: success
  type: float
waited:
  description: Seconds spent waiting (V(wait)).
  returned: success
  type: float
msg:
  description: One line saying what happened to the workers and what it means.
  returned: always
  type: str
"""

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import AWS_COMMON_ARGS, client_from_params, fail_aws, require_boto3
from ansible.module_utils.reefguide.worker_tasks import restart_message, worker_tasks


def stack_ecs(module: AnsibleModule, cf: Any, stack: str) -> tuple[str, set[str]]:
    """The stack's cluster name and the families of its task definitions ('' and none with restart=none
    on a stack that has no cluster)."""
    clusters, families = [], set()
    try:
        for page in cf.get_paginator("list_stack_resources").paginate(StackName=stack):
            for res in page["StackResourceSummaries"]:
                physical = res.get("PhysicalResourceId") or ""
                if res["ResourceType"] == "AWS::ECS::Cluster":
                    clusters.append(physical.rsplit("/", 1)[-1])
                elif res["ResourceType"] == "AWS::ECS::TaskDefinition":
                    families.add(physical.rsplit("/", 1)[-1].rsplit(":", 1)[0])
    except Exception as exc:
        fail_aws(module, exc, "listing the resources of stack %s" % stack)
    if not clusters and module.params["restart"] == "none":
        return "", set()
    if len(clusters) != 1 or not families:
        module.fail_json(msg="stack %s has %d ECS clusters and %d task definitions: it is not a ReefGuide stack with "
                             "workers (leave restart_workers unset for this deployment)"
                             % (stack, len(clusters), len(families)))
    return clusters[0], families


def running_tasks(module: AnsibleModule, ecs: Any, cluster: str, arns: Any = None) -> list[dict[str, Any]]:
    """The cluster's running tasks, described (or these tasks, whatever their state)."""
    try:
        if arns is None:
            arns = [a for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, desiredStatus="RUNNING")
                    for a in page["taskArns"]]
        tasks = []
        for i in range(0, len(arns), 100):  # DescribeTasks takes at most 100
            tasks += ecs.describe_tasks(cluster=cluster, tasks=arns[i:i + 100])["tasks"]
        return tasks
    except Exception as exc:
        fail_aws(module, exc, "listing the tasks of ECS cluster %s" % cluster)
    return []


def wait_for_exit(module: AnsibleModule, ecs: Any, cluster: str, workers: list[dict[str, Any]]) -> float:
    start, p = time.time(), module.params
    while True:
        states = {t["taskArn"]: t.get("lastStatus") for t in running_tasks(module, ecs, cluster, [w["task"]
                                                                                                 for w in workers])}
        for w in workers:
            w["outcome"] = "exited" if states.get(w["task"], "STOPPED") == "STOPPED" else "still_running"
        waited = time.time() - start
        if all(w["outcome"] == "exited" for w in workers) or waited >= p["wait_timeout"]:
            return waited
        time.sleep(min(p["poll_interval"], max(0.0, p["wait_timeout"] - waited)))


def main() -> None:
    spec = dict(stack_name=dict(type="str", required=True),
                restart=dict(type="str", choices=["wait", "force", "none"], default="wait"),
                started_before=dict(type="float"), wait_timeout=dict(type="int", default=900),
                poll_interval=dict(type="float", default=5.0))
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_boto3(module)
    p = module.params
    before = p["started_before"] if p["started_before"] is not None else time.time()
    cluster, families = stack_ecs(module, client_from_params(module, "cloudformation"), p["stack_name"])
    ecs = client_from_params(module, "ecs")
    workers = worker_tasks(running_tasks(module, ecs, cluster), families, before) if cluster else []
    oldest = min((w["started_at"] for w in workers), default=None)
    waited, changed = 0.0, False
    if p["restart"] == "none":
        module.exit_json(changed=False, cluster=cluster, workers=workers, oldest_started_at=oldest, waited=0.0,
                         restart="none", msg="%d worker task(s) running%s" % (
                             len(workers), "" if cluster else " (the stack has no ECS cluster)"))
    if module.check_mode:
        for w in workers:
            w["outcome"] = "would_stop" if p["restart"] == "force" else "would_wait"
    elif p["restart"] == "force":
        for w in workers:
            try:
                ecs.stop_task(cluster=cluster, task=w["task"],
                              reason="reefguide-efs restart_workers=force: started before a release")
            except Exception as exc:
                fail_aws(module, exc, "stopping worker task %s" % w["task"])
            w["outcome"] = "stopped"
        changed = bool(workers)
    elif workers:
        waited = wait_for_exit(module, ecs, cluster, workers)
    module.exit_json(changed=changed, cluster=cluster, workers=workers, oldest_started_at=oldest,
                     waited=round(waited, 1), restart=p["restart"],
                     msg=restart_message(p["restart"], workers, waited, p["wait_timeout"], module.check_mode))


if __name__ == "__main__":
    main()
