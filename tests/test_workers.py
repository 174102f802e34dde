"""Running workers survive our releases, and restart_workers lets the old ones go without losing a job.

The lab plays upstream's ECS side (lab/reefguide_lab/ecs_lab.py): two services (capacity manager,
web API) and worker tasks that the capacity-manager stand-in starts with RunTask when jobs wait
(`labctl workers job`). Each worker stand-in (workers.py) holds its volume's root, data/reefguide,
by inode, as the task's EFS mount does, and looks at it continuously (root still live? cache/
there?) while stage_data.yml, rollback.yml and teardown.yml run; asked to read, it reports every
file it sees. restart_workers=true waits for the workers started before the release to exit on
their own; restart_workers=force stops them, losing the job one had in progress; neither touches
a service."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.reefguide.worker_tasks import worker_tasks

from helpers import ROOT, run_module, run_playbook
from helpers import make_tree as make
from lab import Lab, running_lab

INVENTORY = ROOT / "inventory" / "lab.yml"
PACKAGE = "Moore_2025-01-17_v070_rc1"
V1 = {"config.toml": "version = 1\n", "layers/depth.tif": "d" * 4000, "layers/old.tif": "old layer",
      "rules/a.csv": "a,1\n"}
V2 = {"config.toml": "version = 2\n", "layers/depth.tif": "d" * 4000, "layers/slope.tif": "s" * 3000,
      "criteria/reefs.gpkg": "g" * 2000, "rules": "rules are now one file\n"}
V3 = dict(V2, **{"config.toml": "version = 3\n"})
PKG_FILES = {"datapackage.json": '{"name": "Moore"}\n', "spatial/reefs.gpkg": "r" * 5000}
LONG = "100000"  # seconds: a job that keeps its worker busy for the whole test


@pytest.fixture(scope="module")
def wlab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("workers-lab")) as lab:
        yield lab


def digests(files: dict[str, str], prefix: str = "") -> dict[str, str]:
    return {prefix + rel: hashlib.sha256(text.encode()).hexdigest() for rel, text in files.items()}


def play(lab: Lab, *args: str) -> str:
    """The run's output with the callback's line wrapping undone, so summary lines can be found whole."""
    run = run_playbook(lab.env, INVENTORY, *args)
    assert run.returncode == 0, run.stdout[-4000:]
    return " ".join(run.stdout.split())


def stage_root(lab: Lab, src: Path, *extra: str) -> str:
    return play(lab, "stage_data.yml", "-e", "src=%s" % src, "-e", "preset=reefguide_data", "-e", "mode=replace",
                *extra)


def status(lab: Lab) -> dict[str, Any]:
    return json.loads(lab.ctl("workers", "status").stdout)


def live(lab: Lab) -> dict[str, Any]:
    """The stand-ins of the worker tasks running now, by task ARN."""
    doc = status(lab)
    return {arn: doc["standins"][arn] for arn, rec in doc["supervisor"]["workers"].items()
            if rec["stopped_reason"] is None and doc["standins"].get(arn)}


def read(lab: Lab) -> dict[str, Any]:
    return json.loads(lab.ctl("workers", "read").stdout)


def job(lab: Lab, kind: str, seconds: str = "0") -> dict[str, Any]:
    """Queue a job and wait until a worker (started for it by the capacity manager) has taken it."""
    return json.loads(lab.ctl("workers", "job", "--type", kind, "--seconds", seconds, "--wait").stdout)


def ecs_tasks(lab: Lab) -> dict[str, dict[str, Any]]:
    """Every task of the stack's cluster that ECS lists as running, described, by ARN."""
    ecs = lab.client("ecs")
    cluster = lab.state["stacks"][lab.stack_name]["cluster"]
    arns = ecs.list_tasks(cluster=cluster)["taskArns"]
    return {t["taskArn"]: t for t in ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]} if arns else {}


def service_tasks(lab: Lab) -> dict[str, str]:
    """The services' running tasks (group service:<name>) and the deployment that started each."""
    return {arn: t["startedBy"] for arn, t in ecs_tasks(lab).items() if t["group"].startswith("service:")}


def expected(version: dict[str, str]) -> dict[str, str]:
    """What a worker must read: the staged version, and the data package released on its own."""
    return dict(digests(version), **digests(PKG_FILES, "adria/datapackages/%s/" % PACKAGE))


def assert_reads(lab: Lab, version: dict[str, str]) -> None:
    for task, seen in read(lab).items():
        assert seen["errors"] == [] and seen["cache_present"], (task, seen)
        assert seen["files"] == expected(version), task


def never_hurt(lab: Lab) -> dict[str, int]:
    """Every stand-in found cache/ at every look, its root never deleted, no error; their look counts."""
    looks = {}
    for task, st in live(lab).items():
        assert st["cache_missing_looks"] == 0 and st["root_deleted_looks"] == 0, (task, st["samples"])
        assert st["errors"] == {}, (task, st["samples"])
        looks[task] = st["looks"]
    return looks


def looked_on(lab: Lab, before: dict[str, int]) -> None:
    """The stand-ins kept looking while the run went on (its whole remote part lies in between)."""
    after = never_hurt(lab)
    assert all(after[s] > before[s] for s in before), (before, after)


def test_workers_read_each_release_rollback_and_prune_and_always_find_the_cache(wlab: Lab, tmp_path: Path) -> None:
    play(wlab, "stage_data.yml", "-e", "src=%s" % make(tmp_path / "pkg", PKG_FILES), "-e", "preset=adria_datapackage",
         "-e", "package=%s" % PACKAGE)
    stage_root(wlab, make(tmp_path / "v1", V1))
    wlab.ctl("workers", "start")  # workers exit after 5 min idle, as upstream's: they outlive this test
    assert status(wlab)["supervisor"]["workers"] == {}  # no job yet, no worker: the capacity manager starts none
    holder = json.loads(wlab.ctl("workers", "job", "--type", "TEST", "--seconds", LONG, "--hold", "config.toml",
                                 "--wait").stdout)  # a model run keeps V1's config.toml open throughout
    job(wlab, "ADRIA_MODEL_RUN")
    pids = {task: st["pid"] for task, st in live(wlab).items()}
    families = sorted(st["family"] for st in live(wlab).values())
    stack = wlab.stack_name.replace("-", "")
    assert len(families) == 2 and all(f.startswith(wlab.stack_name) or f.startswith(stack) for f in families)
    assert "ADRIAMODELRUN" in families[0] and "TEST" in families[1], families
    assert_reads(wlab, V1)

    # keep=0 would prune V1 at once, and with it the file the worker holds: it is kept, and said so
    looks = never_hurt(wlab)
    out = stage_root(wlab, make(tmp_path / "v2", V2), "-e", "keep=0")
    assert "Workers: data/reefguide stayed the directory the workers mount and was updated in place" in out, out[-3000:]
    kept = re.search(r"Releases kept beyond keep=0: (\S+) \(data/reefguide\): 2 worker task\(s\) still running "
                     r"started before they were retired and may hold their files open", out)
    assert kept, out[-3000:]
    # what the first stage retired (the provisioned tree, before any worker started) goes as keep says
    assert kept.group(1) not in " ".join(re.findall(r"Releases pruned[^']*", out))
    looked_on(wlab, looks)
    assert_reads(wlab, V2)

    looks = never_hurt(wlab)
    out = play(wlab, "rollback.yml", "-e", "preset=reefguide_data")
    assert "updated in place" in out, out[-3000:]
    looked_on(wlab, looks)
    assert_reads(wlab, V1)

    looks = never_hurt(wlab)
    out = play(wlab, "teardown.yml", "-e", "keep=0")  # V2, retired by the rollback while the workers ran: kept
    assert "releases pruned: []" in out and "Releases kept beyond keep=0" in out, out[-3000:]
    looked_on(wlab, looks)
    assert_reads(wlab, V1)
    # the same worker tasks all along: nothing restarted them, they simply kept reading
    assert {task: st["pid"] for task, st in live(wlab).items()} == pids
    assert live(wlab)[holder["task"]]["held"]["deleted_looks"] == 0  # the file it holds was never deleted

    # those workers gone (stopped with the lab's ECS), the next teardown prunes what they held
    wlab.ctl("workers", "stop")
    out = play(wlab, "teardown.yml", "-e", "keep=0")
    assert "releases pruned: []" not in out and "Releases kept beyond" not in out, out[-3000:]


def test_workers_are_told_from_service_tasks_and_by_when_they_started() -> None:
    families = {"stackjobsystemTESTtaskdefAB12", "stackcapacitymanagertask9C"}
    def task(n: int, family: str, started: float, **kw: str) -> dict[str, Any]:
        return dict({"taskArn": "arn:aws:ecs:r:1:task/c/t%d" % n, "startedAt": started, "desiredStatus": "RUNNING",
                     "taskDefinitionArn": "arn:aws:ecs:r:1:task-definition/%s:%d" % (family, n)}, **kw)
    tasks = [task(1, "stackjobsystemTESTtaskdefAB12", 100.0, group="family:stackjobsystemTESTtaskdefAB12"),
             task(2, "stackjobsystemTESTtaskdefAB12", 50.0),  # an older revision of the same family: a worker
             task(3, "stackcapacitymanagertask9C", 10.0, group="service:cm", startedBy="ecs-svc/1"),  # a service's
             task(4, "stackjobsystemTESTtaskdefAB12", 300.0),  # started after the release: mounts the new data
             task(5, "otherstackworker", 10.0),  # not this stack's
             task(6, "stackjobsystemTESTtaskdefAB12", 20.0, desiredStatus="STOPPED"),
             dict(task(7, "stackjobsystemTESTtaskdefAB12", 0.0), startedAt=None)]  # not started: not mounted yet
    assert [w["task"][-2:] for w in worker_tasks(tasks, families, 200.0)] == ["t2", "t1"]


def test_restart_workers_lets_the_old_workers_go_and_never_touches_a_service(wlab: Lab, tmp_path: Path) -> None:
    wlab.ctl("workers", "stop")  # again with workers that exit after 2 s idle
    wlab.ctl("workers", "start", "--idle-exit", "2")
    services = service_tasks(wlab)
    assert len(services) == 2 and all(d.startswith("ecs-svc/") for d in services.values()), services

    # wait: a worker busy with a 4 s job is waited for until it exits on its own; its job is done, not lost
    quick = job(wlab, "TEST", "4")
    waited = run_module("ecs_workers", {"stack_name": wlab.stack_name, "poll_interval": 0.2, "wait_timeout": 120},
                        env=wlab.env)
    assert not waited.get("failed") and not waited["changed"], waited
    assert [(w["task"], w["outcome"]) for w in waited["workers"]] == [(quick["task"], "exited")], waited
    assert waited["waited"] >= 2, waited  # it waited for the job to end, then for the idle exit
    assert status(wlab)["jobs"][quick["id"]]["status"] == "SUCCEEDED"

    # a worker busy for the whole test: check mode lists it and changes nothing
    busy = job(wlab, "ADRIA_MODEL_RUN", LONG)
    would = run_module("ecs_workers", {"stack_name": wlab.stack_name, "restart": "force"}, check=True, env=wlab.env)
    assert [(w["task"], w["outcome"]) for w in would["workers"]] == [(busy["task"], "would_stop")], would
    assert busy["task"] in ecs_tasks(wlab)

    bad = run_playbook(wlab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % make(tmp_path / "v3", V3),
                       "-e", "preset=reefguide_data", "-e", "restart_workers=maybe")
    assert bad.returncode != 0 and "restart_workers must be true, force or false (not 'maybe')" in " ".join(
        bad.stdout.split())

    # true: waits up to the bound, says the busy worker still runs, and stops nothing
    out = stage_root(wlab, tmp_path / "v3", "-e", "restart_workers=true", "-e", "restart_workers_wait=3")
    assert re.search(r"Workers started before the release \(restart_workers=true\): 1 of the 1 worker task\(s\) "
                     r"started before the release still ran after \d+ s: %s\. They exit by themselves once idle"
                     % busy["task"].rsplit("/", 1)[1], out), out[-3000:]
    assert busy["task"] in ecs_tasks(wlab) and status(wlab)["jobs"][busy["id"]]["status"] == "IN_PROGRESS"
    assert_reads(wlab, V3)  # it reads the new files as it opens them
    assert service_tasks(wlab) == services

    # force, with nothing to stage: the busy worker is stopped all the same and its job lost (it stays IN_PROGRESS)
    out = stage_root(wlab, tmp_path / "v3", "-e", "restart_workers=force")
    assert "Nothing to do" in out, out[-3000:]
    assert ("Workers started before the release (restart_workers=force): stopped the 1 worker task(s) started before "
            "the release (%s)" % busy["task"].rsplit("/", 1)[1]) in out, out[-3000:]
    assert "stays IN_PROGRESS until the job expiry marks it TIMED_OUT (about 2 h)" in out
    assert busy["task"] not in ecs_tasks(wlab)
    deadline = time.time() + 30
    while busy["task"] in live(wlab):  # Fargate's part: the stopped task's container ends
        assert time.time() < deadline, status(wlab)["supervisor"]
        time.sleep(0.1)
    assert status(wlab)["jobs"][busy["id"]]["status"] == "IN_PROGRESS"  # lost: no worker will finish it
    assert service_tasks(wlab) == services

    # a new job: the capacity manager starts a new worker, on the data that is live now
    fresh = job(wlab, "TEST", LONG)
    assert fresh["task"] not in (quick["task"], busy["task"])
    assert_reads(wlab, V3)

    # a rollback with force: the same for the worker started since
    out = play(wlab, "rollback.yml", "-e", "preset=reefguide_data", "-e", "restart_workers=force")
    assert re.search(r"data/reefguide: release \S+ is live again \(it replaced (\S+), which is kept: roll forward "
                     r"with -e release_id=\1\)", out), out[-3000:]
    assert ("Workers started before the release (restart_workers=force): stopped the 1 worker task(s) started before "
            "the release (%s)" % fresh["task"].rsplit("/", 1)[1]) in out, out[-3000:]
    assert service_tasks(wlab) == services
    wlab.ctl("workers", "stop")
    wlab.ctl("workers", "start")  # the next test's workers outlive it
    job(wlab, "TEST")
    job(wlab, "ADRIA_MODEL_RUN")


def test_the_stand_ins_see_a_whole_directory_swap_as_a_worker_would(wlab: Lab) -> None:
    """What the in-place release avoids, and that the stand-ins would tell: the workers' root renamed
    away (today's whole-directory swap) leaves them on the old directory without cache/; deleting it
    (a prune) leaves them a deleted directory. Done by hand on the lab's EFS, last in this module."""
    root = wlab.efs_path / "data/reefguide"
    old = root.with_name("reefguide.retired")
    root.rename(old)
    make(root, {"config.toml": "new\n"})
    (old / "cache").rename(root / "cache")
    deadline = time.time() + 30
    while not all(st["cache_missing_looks"] for st in live(wlab).values()):
        assert time.time() < deadline, status(wlab)
        time.sleep(0.1)
    assert all("config.toml" not in seen["files"] or seen["files"]["config.toml"] != digests({"c": "new\n"})["c"]
               for seen in read(wlab).values())
    shutil.rmtree(old)
    while not all(st["root_deleted_looks"] for st in live(wlab).values()):
        assert time.time() < deadline, status(wlab)
        time.sleep(0.1)
    assert all(seen["files"] == {} for seen in read(wlab).values())
