"""The ECS side of a ReefGuide stack, in the lab: what AWS and upstream's capacity manager do.

Upstream (open-AIMS/reefguide) runs two ECS services, the capacity manager and the web API
(packages/infra/src/components/jobs.ts, ecsWebAPI.ts). The workers are not services: the
capacity manager (packages/capacity-manager/src/manager.ts) starts a worker as a standalone
task with RunTask when pending jobs outnumber the workers it tracks, tracks them in memory only,
never replaces a stopped one; a worker exits by itself when it has been idle a while. One
supervisor per stack plays three parts on moto's ECS:

- the ECS scheduler: keeps one task per service running, started as ECS starts a service's
  tasks (group `service:<name>`, startedBy the deployment id); a new deployment replaces it;
- the capacity manager: reads the jobs queue (jobs/*.json, `labctl workers job`), and RunTasks a
  worker of the task definition whose JOB_TYPES take the job; a new deployment of its service
  forgets the workers it tracked, as the real one's memory does;
- Fargate: each worker task's container is a worker stand-in process (workers.py) that mounts
  the volume's root directory; when it exits (idle), the task is stopped (StopTask, reason
  "Essential container in task exited"); when someone stops the task, the process is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .state import LAB_PKG, client, load, write_json

POLL_SECONDS = 0.3
EXITED = "Essential container in task exited"


def families(arns: list[str]) -> list[str]:
    """arn:aws:ecs:<region>:<account>:task-definition/<family>:<revision> -> family."""
    return [a.rsplit("/", 1)[1].rsplit(":", 1)[0] for a in arns]


def volume_root(task_def: dict[str, Any]) -> Optional[str]:
    """The root directory of the task definition's EFS volume (moto keeps CloudFormation's
    EFSVolumeConfiguration under a key of its own spelling)."""
    for vol in task_def.get("volumes", []):
        for key, conf in vol.items():
            if key.lower() == "efsvolumeconfiguration" and isinstance(conf, dict):
                return conf.get("rootDirectory") or conf.get("RootDirectory") or "/"
    return None


def discover(state: dict[str, Any], stack: str) -> dict[str, Any]:
    """The stack's cluster, services (name, task definition) and worker task definitions (their
    JOB_TYPES and the EFS root their volume mounts), from the stack's resources."""
    from .instance import efs_storage
    info = state["stacks"][stack]
    ecs = client(state, "ecs")
    resources = client(state, "cloudformation").describe_stack_resources(StackName=stack)["StackResources"]
    by_type: dict[str, list[str]] = {}
    for res in resources:
        by_type.setdefault(res["ResourceType"], []).append(res["PhysicalResourceId"])
    cluster = by_type["AWS::ECS::Cluster"][0]
    services = []
    for arn in by_type.get("AWS::ECS::Service", []):
        name = arn.rsplit("/", 1)[1]
        svc = ecs.describe_services(cluster=cluster, services=[name])["services"][0]
        services.append({"service": name, "task_definition": svc["taskDefinition"]})
    workers = []
    for arn in by_type.get("AWS::ECS::TaskDefinition", []):
        td = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        env = {e["name"]: e["value"] for c in td["containerDefinitions"] for e in c.get("environment", [])}
        root = volume_root(td)
        if env.get("JOB_TYPES") and root:
            workers.append({"task_definition": arn, "family": td["family"], "job_types": env["JOB_TYPES"].split(","),
                            "source": str(efs_storage() / info["fs_id"] / root.strip("/"))})
    # upstream's capacity manager starts workers in a public subnet of the stack's VPC, with its security group
    network = {"awsvpcConfiguration": {"subnets": by_type["AWS::EC2::Subnet"][:1],
                                       "securityGroups": by_type["AWS::EC2::SecurityGroup"][:1],
                                       "assignPublicIp": "ENABLED"}}
    return {"cluster": cluster, "services": sorted(services, key=lambda s: s["service"]),
            "workers": sorted(workers, key=lambda w: w["family"]), "network": network}


def primary_deployment(ecs: Any, cluster: str, service: str) -> str:
    found = ecs.describe_services(cluster=cluster, services=[service])["services"][0]["deployments"]
    return next(d["id"] for d in found if d["status"] == "PRIMARY")


def task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


class Supervisor:
    def __init__(self, stack: str, workers_dir: Path, idle_exit: float) -> None:
        self.stack, self.dir, self.idle_exit = stack, workers_dir, idle_exit
        self.state = load()
        self.found = discover(self.state, stack)
        self.cluster = self.found["cluster"]
        self.ecs = client(self.state, "ecs")
        self.services: dict[str, dict[str, Any]] = {}  # name -> deployment, task, starts
        self.tracked: list[str] = []  # the capacity manager's memory: the worker tasks it started
        self.procs: dict[str, subprocess.Popen] = {}  # worker task ARN -> its container (stand-in)
        self.workers: dict[str, dict[str, Any]] = {}  # worker task ARN -> what the status shows
        (self.dir / "jobs").mkdir(parents=True, exist_ok=True)

    # the ECS scheduler --------------------------------------------------------------------------
    def schedule_services(self) -> None:
        for svc in self.found["services"]:
            name = svc["service"]
            deployment = primary_deployment(self.ecs, self.cluster, name)
            rec = self.services.setdefault(name, {"deployment": None, "task": None, "starts": 0})
            if rec["deployment"] == deployment:
                continue
            old = rec["task"]
            started = self.ecs.run_task(cluster=self.cluster, taskDefinition=svc["task_definition"], count=1,
                                        launchType="FARGATE", group="service:" + name, startedBy=deployment,
                                        networkConfiguration=self.found["network"])
            rec.update(deployment=deployment, task=started["tasks"][0]["taskArn"], starts=rec["starts"] + 1)
            if old:
                self.ecs.stop_task(cluster=self.cluster, task=old, reason="Task replaced by deployment %s" % deployment)
            if "capacity" in name.lower() and old:
                self.tracked = []  # a new capacity manager knows none of the workers the old one started

    # the capacity manager -------------------------------------------------------------------------
    def pending_jobs(self) -> list[dict[str, Any]]:
        jobs = []
        for path in sorted(self.dir.glob("jobs/*.json")):
            try:
                doc = json.loads(path.read_text())
            except ValueError:
                continue
            if doc.get("status") == "PENDING":
                jobs.append(doc)
        return jobs

    def scale(self) -> None:
        pending = self.pending_jobs()
        for kind in self.found["workers"]:
            waiting = sum(1 for j in pending if j["type"] in kind["job_types"])
            mine = [t for t in self.tracked if self.workers.get(t, {}).get("family") == kind["family"]]
            for _ in range(max(0, waiting - len(mine))):
                self.launch(kind)

    def launch(self, kind: dict[str, Any]) -> None:
        task = self.ecs.run_task(cluster=self.cluster, taskDefinition=kind["task_definition"], count=1,
                                 launchType="FARGATE", networkConfiguration=self.found["network"])["tasks"][0]
        arn = task["taskArn"]
        self.tracked.append(arn)
        status = self.dir / ("%s.json" % task_id(arn))
        argv = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m", "reefguide_lab.workers",
                "standin", "--task", arn, "--family", kind["family"], "--job-types", ",".join(kind["job_types"]),
                "--source", kind["source"], "--mount", str(self.dir / "mnt" / task_id(arn)), "--status", str(status),
                "--request", str(self.dir / ("%s.request" % task_id(arn))), "--jobs", str(self.dir / "jobs"),
                "--idle-exit", str(self.idle_exit)]
        with open(self.dir / ("%s.log" % task_id(arn)), "ab") as log:
            self.procs[arn] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                               env=dict(os.environ, PYTHONPATH=str(LAB_PKG.parent)))
        self.workers[arn] = {"family": kind["family"], "pid": self.procs[arn].pid, "status_file": str(status),
                             "started_at": time.time(), "stopped_reason": None}

    # Fargate ------------------------------------------------------------------------------------
    def follow_workers(self) -> None:
        live = [arn for arn, rec in self.workers.items() if rec["stopped_reason"] is None]
        described = {}
        if live:
            for t in self.ecs.describe_tasks(cluster=self.cluster, tasks=live)["tasks"]:
                described[t["taskArn"]] = t
        for arn in live:
            proc, rec = self.procs[arn], self.workers[arn]
            task = described.get(arn, {})
            if proc.poll() is not None:  # the container exited: ECS stops its task
                if task.get("desiredStatus") != "STOPPED":
                    self.ecs.stop_task(cluster=self.cluster, task=arn, reason=EXITED)
                rec["stopped_reason"] = task.get("stoppedReason") or EXITED
            elif task.get("desiredStatus") == "STOPPED":  # StopTask: the container gets SIGTERM
                stop_process(proc)
                rec["stopped_reason"] = task.get("stoppedReason") or "stopped"
            if rec["stopped_reason"] is not None:
                rec["stopped_at"] = time.time()
                if arn in self.tracked:
                    self.tracked.remove(arn)

    def run(self) -> None:
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        while not stopping:
            self.schedule_services()
            self.scale()
            self.follow_workers()
            self.write_status()
            time.sleep(POLL_SECONDS)
        # the lab going down: its tasks stop, so a supervisor started later finds ECS as it left it
        for proc in self.procs.values():
            stop_process(proc)
        running = [a for a, rec in self.workers.items() if rec["stopped_reason"] is None]
        try:
            for arn in running + [rec["task"] for rec in self.services.values()]:
                self.ecs.stop_task(cluster=self.cluster, task=arn, reason="the lab's ECS stand-ins stopped")
        except Exception as exc:  # moto already gone (labctl down): nothing left to keep consistent
            print("ECS stand-ins: tasks not stopped in ECS: %s" % exc, file=sys.stderr)

    def write_status(self) -> None:
        write_json(self.dir / "supervisor.json", {
            "pid": os.getpid(), "stack": self.stack, "cluster": self.cluster, "services": self.services,
            "workers": self.workers, "tracked": self.tracked,
            "kinds": self.found["workers"]})


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
