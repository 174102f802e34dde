# reefguide-efs: a detached step's sign that its module began (action_plugins/reefguide_remote/detached.py).
#
# async_wrapper's first process waits 2.5 s at most for the job's notice that it is under way, then
# returns "started" and exits; a job slower than that to daemonise (an instance short of CPU) finds
# the notice's pipe closed, and dies before its module runs, leaving a job file that says "started"
# forever. Nothing of the module ran, so the controller starts it again; and only then: a job that
# dies after this mark (killed, the instance stopped) may have done part of its work, and fails the run.

from __future__ import annotations

import os

JOBS_DIR = "/run/reefguide-efs/jobs"  # the job directories the controller makes (one per start's token)
BEGAN = "began"


def mark_began(module) -> None:
    """Leave BEGAN in this job's own directory; a no-op outside a detached step of the remote part."""
    job_dir = os.environ.get("ANSIBLE_ASYNC_DIR", "")
    if os.path.dirname(job_dir.rstrip("/")) != JOBS_DIR:
        return
    try:
        with open(os.path.join(job_dir, BEGAN), "w"):
            pass
    except OSError as exc:  # unmarked, a death of this job would read as "never began": not started again
        module.fail_json(msg="could not mark the job as begun in %s: %s" % (job_dir, exc))
