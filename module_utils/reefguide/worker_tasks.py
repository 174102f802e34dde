# reefguide-efs: which ECS tasks of a ReefGuide stack are its workers, and what to say about them.
#
# Upstream's workers are standalone tasks the capacity manager starts with RunTask (no group but
# the default family:<family>, no startedBy); a service's tasks carry group service:<name> and
# startedBy ecs-svc/<deployment>. A worker runs one of the stack's task definitions, matched by
# family: a worker started before a stack update runs an older revision of it.

from __future__ import annotations

import datetime
from typing import Any, Optional

JOB_LOSS = ("a job it had in progress is lost: ReefGuide never hands an assigned job to another worker, so "
            "it stays IN_PROGRESS until the job expiry marks it TIMED_OUT (about 2 h), and identical requests "
            "get the stuck job back meanwhile")


def family_of(task_definition_arn: str) -> str:
    """arn:aws:ecs:<region>:<account>:task-definition/<family>:<revision> -> family."""
    return task_definition_arn.rsplit("/", 1)[-1].rsplit(":", 1)[0]


def started_by_a_service(task: dict[str, Any]) -> bool:
    return (task.get("group") or "").startswith("service:") or (task.get("startedBy") or "").startswith("ecs-svc/")


def epoch(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return float(value)


def worker_tasks(tasks: list[dict[str, Any]], families: set[str], started_before: float) -> list[dict[str, Any]]:
    """The running worker tasks started before `started_before` (epoch seconds), oldest first, each as
    {task, family, started_at}; a task not yet started (no startedAt) has not mounted EFS."""
    found = []
    for task in tasks:
        family = family_of(task.get("taskDefinitionArn") or "")
        started = epoch(task.get("startedAt"))
        if (family in families and not started_by_a_service(task) and task.get("desiredStatus") != "STOPPED"
                and started is not None and started < started_before):
            found.append({"task": task["taskArn"], "family": family, "started_at": started})
    return sorted(found, key=lambda w: (w["started_at"], w["task"]))


def task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def restart_message(mode: str, workers: list[dict[str, Any]], waited: float, bound: float, check: bool) -> str:
    """One line: what happened to the workers started before the release, and what it means."""
    n = len(workers)
    if not n:
        return ("no worker task was running from before the release: every worker the capacity manager starts "
                "from now on mounts the data that is live now")
    ids = ", ".join(task_id(w["task"]) for w in workers)
    if check:
        return "would %s the %d worker task(s) started before the release: %s" % (
            "stop" if mode == "force" else "wait up to %d s for" % bound, n, ids)
    if mode == "force":
        return ("stopped the %d worker task(s) started before the release (%s); the capacity manager starts new ones "
                "when jobs wait, on the data that is live now. If one of them was busy, %s" % (n, ids, JOB_LOSS))
    still = [w for w in workers if w["outcome"] == "still_running"]
    if not still:
        return ("the %d worker task(s) started before the release exited on their own within %d s (%s): every "
                "worker from now on starts on the data that is live now" % (n, waited, ids))
    return ("%d of the %d worker task(s) started before the release still ran after %d s: %s. They exit by "
            "themselves once idle (and a busy one only when its job ends); until then they read the new files as "
            "they open them. restart_workers=force stops them now, but %s" % (
                len(still), n, waited, ", ".join(task_id(w["task"]) for w in still), JOB_LOSS))
