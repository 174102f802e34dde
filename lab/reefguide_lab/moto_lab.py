"""The lab's moto server: moto_server, with ECS tasks as AWS keeps them, and IAM on presigned URLs with --iam.

moto 5's ECS tasks differ from AWS's where the worker stand-ins and ecs_workers look:
- a task moves one state towards STOPPED at each DescribeTasks (moto's test default for the
  `ecs::task` model); on AWS a task runs until it exits or StopTask stops it;
- a task has no createdAt/startedAt/stoppedAt, which ecs_workers needs to tell the workers
  started before a release;
- ListTasks returns stopped tasks too (AWS lists only desiredStatus RUNNING unless asked) and
  ignores serviceName;
- a task definition from CloudFormation loses its EFS volume configuration (EFSVolumeConfiguration
  is camel-cased into a key nothing reads) and its Cpu, NetworkMode and RequiresCompatibilities;
- a VPC from CloudFormation ignores EnableDnsHostnames, without which moto cannot start an awsvpc
  (Fargate) task;
- an instance keeps its first LaunchTime across stops; EC2 sets it at every start from stopped;
- an EFS file system's SizeInBytes is always 0; EFS meters what the file system holds (the lab's
  storage for it: its files' sizes, all in Standard, as of the call).
This wrapper makes moto answer as AWS does on those points, and nothing else.

    python -m reefguide_lab.moto_lab [--iam] -H 127.0.0.1 -p PORT   (then moto_server's arguments)
"""

from __future__ import annotations

import datetime
import sys
from typing import Any


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _camel(key: str) -> str:
    return {"EFSVolumeConfiguration": "efsVolumeConfiguration", "IAM": "iam"}.get(key) or key[0].lower() + key[1:]


def install_ecs() -> None:
    from moto.core.utils import remap_nested_keys
    from moto.ecs import models
    from moto.moto_api import state_manager

    def task_definition_from_cloudformation(cls: Any, resource_name: str, cloudformation_json: Any, account_id: str,
                                            region_name: str, **kwargs: Any) -> Any:
        p = cloudformation_json["Properties"]
        return models.ecs_backends[account_id][region_name].register_task_definition(
            family=p.get("Family") or resource_name,
            container_definitions=remap_nested_keys(p.get("ContainerDefinitions", []), _camel),
            volumes=remap_nested_keys(p.get("Volumes", []), _camel),
            network_mode=p.get("NetworkMode"), requires_compatibilities=p.get("RequiresCompatibilities"),
            cpu=p.get("Cpu"), memory=p.get("Memory"))

    models.TaskDefinition.create_from_cloudformation_json = classmethod(task_definition_from_cloudformation)

    # a task stays RUNNING until StopTask (or its container's exit, which the lab reports by StopTask)
    state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 10 ** 12})
    task_init, stop_task, list_tasks = models.Task.__init__, models.EC2ContainerServiceBackend.stop_task, \
        models.EC2ContainerServiceBackend.list_tasks

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        task_init(self, *args, **kwargs)
        self.created_at = self.started_at = _now()

    def stop(self: Any, cluster_str: str, task_str: str, reason: str) -> Any:
        task = stop_task(self, cluster_str, task_str, reason)
        if getattr(task, "stopped_at", None) is None:
            task.stopping_at = task.stopped_at = _now()
        return task

    def listed(self: Any, cluster_str: Any = None, container_instance: Any = None, family: Any = None,
               started_by: Any = None, service_name: Any = None, desiredStatus: Any = None) -> Any:
        tasks = list_tasks(self, cluster_str, container_instance, family, started_by, None, desiredStatus or "RUNNING")
        # a service's tasks carry its group, service:<name> (moto ignores serviceName)
        return [t for t in tasks if not service_name or t.group == "service:" + service_name]

    models.Task.__init__ = init
    models.EC2ContainerServiceBackend.stop_task = stop
    models.EC2ContainerServiceBackend.list_tasks = listed



def install_efs_size() -> None:
    import os
    import time

    from moto.efs.models import FileSystem

    from .instance import efs_storage

    def size_in_bytes(self: Any) -> dict[str, Any]:
        total = 0
        for top, _dirs, files in os.walk(efs_storage() / self.file_system_id):
            for name in files:
                try:
                    total += os.lstat(os.path.join(top, name)).st_size
                except OSError:
                    pass
        return {"Value": total, "ValueInIA": 0, "ValueInStandard": total, "Timestamp": time.time()}

    FileSystem.size_in_bytes = property(size_in_bytes)


def install_launch_time() -> None:
    from moto.core.utils import utcnow
    from moto.ec2.models.instances import Instance

    start = Instance.start

    def started(self: Any) -> Any:
        was = self._state.name
        state = start(self)
        if was == "stopped":
            self.launch_time = utcnow()
        return state

    Instance.start = started


def install_vpc() -> None:
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.vpcs import VPC

    vpc_from_cloudformation = VPC.create_from_cloudformation_json

    def created(cls: Any, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
                **kwargs: Any) -> Any:
        vpc = vpc_from_cloudformation(resource_name, cloudformation_json, account_id, region_name, **kwargs)
        props, backend = cloudformation_json["Properties"], ec2_backends[account_id][region_name]
        for prop, attr in (("EnableDnsSupport", "enable_dns_support"), ("EnableDnsHostnames", "enable_dns_hostnames")):
            if prop in props:
                backend.modify_vpc_attribute(vpc.id, attr, str(props[prop]).lower() == "true")
        return vpc

    VPC.create_from_cloudformation_json = classmethod(created)


def main() -> None:
    argv = sys.argv[1:]
    install_ecs()
    install_vpc()
    install_efs_size()
    install_launch_time()
    if "--iam" in argv:
        argv.remove("--iam")
        from . import moto_iam
        moto_iam.install()
    from moto.server import main as moto_main

    moto_main(argv)


if __name__ == "__main__":
    main()
