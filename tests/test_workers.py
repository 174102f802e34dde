"""Running workers survive our releases. The lab's worker stand-ins (lab/reefguide_lab/workers.py)
hold data/reefguide by inode, as the ECS tasks' access-point mounts do, and look at it continuously
(root still live? cache/ there?) while stage_data.yml, rollback.yml and teardown.yml run; asked to
read, they report every file they see. restart_workers=true starts new ECS deployments, which
restart the stand-ins."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

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


def read(lab: Lab) -> dict[str, Any]:
    return json.loads(lab.ctl("workers", "read").stdout)


def expected(version: dict[str, str]) -> dict[str, str]:
    """What a worker must read: the staged version, and the data package released on its own."""
    return dict(digests(version), **digests(PKG_FILES, "adria/datapackages/%s/" % PACKAGE))


def assert_reads(lab: Lab, version: dict[str, str]) -> None:
    for service, seen in read(lab).items():
        assert seen["errors"] == [] and seen["cache_present"], (service, seen)
        assert seen["files"] == expected(version), service


def never_hurt(lab: Lab) -> dict[str, int]:
    """Every stand-in found cache/ at every look, its root never deleted, no error; their look counts."""
    looks = {}
    for service, st in status(lab)["standins"].items():
        assert st["cache_missing_looks"] == 0 and st["root_deleted_looks"] == 0, (service, st["samples"])
        assert st["errors"] == {}, (service, st["samples"])
        looks[service] = st["looks"]
    return looks


def looked_on(lab: Lab, before: dict[str, int]) -> None:
    """The stand-ins kept looking while the run went on (its whole remote part lies in between)."""
    after = never_hurt(lab)
    assert all(after[s] > before[s] for s in before), (before, after)


def test_workers_read_each_release_rollback_and_prune_and_always_find_the_cache(wlab: Lab, tmp_path: Path) -> None:
    play(wlab, "stage_data.yml", "-e", "src=%s" % make(tmp_path / "pkg", PKG_FILES), "-e", "preset=adria_datapackage",
         "-e", "package=%s" % PACKAGE)
    stage_root(wlab, make(tmp_path / "v1", V1))
    wlab.ctl("workers", "start")
    pids = {s: st["pid"] for s, st in status(wlab)["standins"].items()}
    assert sorted(pids) == ["adria-worker", "reefguide-worker"]
    assert_reads(wlab, V1)

    looks = never_hurt(wlab)
    out = stage_root(wlab, make(tmp_path / "v2", V2))
    assert "Workers: data/reefguide stayed the directory the workers mount and was updated in place" in out, out[-3000:]
    looked_on(wlab, looks)
    assert_reads(wlab, V2)

    looks = never_hurt(wlab)
    out = play(wlab, "rollback.yml", "-e", "preset=reefguide_data")
    assert "updated in place" in out, out[-3000:]
    looked_on(wlab, looks)
    assert_reads(wlab, V1)

    looks = never_hurt(wlab)
    out = play(wlab, "teardown.yml", "-e", "keep=0")  # prunes every kept release, V2's included
    assert "releases pruned: []" not in out, out[-3000:]
    looked_on(wlab, looks)
    assert_reads(wlab, V1)
    # the same stand-ins all along: nothing restarted them, they simply kept reading
    assert {s: st["pid"] for s, st in status(wlab)["standins"].items()} == pids


def primary_deployments(lab: Lab) -> dict[str, str]:
    ecs = lab.client("ecs")
    cluster = lab.state["stacks"][lab.stack_name]["cluster"]
    found = ecs.describe_services(cluster=cluster, services=["adria-worker", "reefguide-worker"])["services"]
    return {s["serviceName"]: next(d["id"] for d in s["deployments"] if d["status"] == "PRIMARY") for s in found}


def standins_follow(lab: Lab, deployments: dict[str, str], timeout: float = 60) -> dict[str, Any]:
    """Wait for the stand-ins of these deployments to have mounted and reported."""
    deadline = time.time() + timeout
    while True:
        standins = status(lab)["standins"]
        if all((standins.get(s) or {}).get("deployment") == d for s, d in deployments.items()):
            return standins
        assert time.time() < deadline, (deployments, standins)
        time.sleep(0.2)


def test_restart_workers_starts_new_deployments_and_the_workers_mount_afresh(wlab: Lab, tmp_path: Path) -> None:
    if not json.loads(wlab.ctl("workers", "status").stdout)["running"]:
        wlab.ctl("workers", "start")
    before = primary_deployments(wlab)
    pids = {s: st["pid"] for s, st in standins_follow(wlab, before).items()}

    # check mode: the module lists what it would restart and restarts nothing
    would = run_module("ecs_workers", {"stack_name": wlab.stack_name}, check=True, env=wlab.env)
    assert not would.get("failed"), would
    assert [(s["service"], s["deployment_before"]) for s in would["services"]] == sorted(before.items())
    assert primary_deployments(wlab) == before

    bad = run_playbook(wlab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % make(tmp_path / "v3", V3),
                       "-e", "preset=reefguide_data", "-e", "restart_workers=maybe")
    assert bad.returncode != 0 and "restart_workers must be true or false, not 'maybe'" in " ".join(bad.stdout.split())
    assert primary_deployments(wlab) == before

    out = stage_root(wlab, tmp_path / "v3", "-e", "restart_workers=true")
    after = primary_deployments(wlab)
    assert all(after[s] != before[s] for s in before), (before, after)
    assert ("Workers restarted (restart_workers=true): a new ECS deployment of adria-worker (%s), reefguide-worker "
            "(%s)" % (after["adria-worker"], after["reefguide-worker"])) in out, out[-3000:]
    standins = standins_follow(wlab, after)
    assert all(standins[s]["pid"] != pids[s] for s in pids)
    never_hurt(wlab)
    assert_reads(wlab, V3)

    # the same data again: nothing to stage, and the restart asked for still happens (it was dropped)
    same = stage_root(wlab, tmp_path / "v3", "-e", "restart_workers=true")
    restarted = primary_deployments(wlab)
    assert "Nothing to do" in same and "Workers restarted (restart_workers=true)" in same, same[-3000:]
    assert all(restarted[s] != after[s] for s in after), (after, restarted)
    after = restarted
    standins_follow(wlab, after)

    out = play(wlab, "rollback.yml", "-e", "preset=reefguide_data", "-e", "restart_workers=true")
    assert re.search(r"data/reefguide: release \S+ is live again \(it replaced (\S+), which is kept: roll forward "
                     r"with -e release_id=\1\)", out), out[-3000:]
    again = primary_deployments(wlab)
    assert all(again[s] != after[s] for s in after) and "Workers restarted (restart_workers=true)" in out
    standins_follow(wlab, again)
    assert_reads(wlab, V1)


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
    while not all(st["cache_missing_looks"] for st in status(wlab)["standins"].values()):
        assert time.time() < deadline, status(wlab)
        time.sleep(0.1)
    assert all("config.toml" not in seen["files"] or seen["files"]["config.toml"] != digests({"c": "new\n"})["c"]
               for seen in read(wlab).values())
    shutil.rmtree(old)
    while not all(st["root_deleted_looks"] for st in status(wlab)["standins"].values()):
        assert time.time() < deadline, status(wlab)
        time.sleep(0.1)
    assert all(seen["files"] == {} for seen in read(wlab).values())
