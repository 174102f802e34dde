"""The record of what is live never lies, as a property: random sequences of our operations (stage in
every mode, rollback, remove, prune) on nested destinations, stages and rollbacks interrupted at
chosen steps (Ctrl-C after the release, the instance stopped before it, kill -9 of the controller
during the upload; a removal of released data, Ctrl-C right after it), and after each step every
record agrees with EFS (a record marked pending claims nothing), nothing that was live at a released
destination is lost without a kept release (a mirror of that destination itself excepted, as
documented), and the same stage again either does nothing because EFS holds it, or stages and then it
does (docs/reliability.md, "The record of what is live"; the named scenarios are test_live_record.py)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import ROOT, playbook_command, run_playbook
from helpers import make_tree as make
from lab import Lab, running_lab
from live_records import (
    INVENTORY,
    NOTHING,
    assert_no_released_data_lost,
    assert_records_true,
    digests,
    efs_files,
    play,
    released_data,
    stage,
)


@pytest.fixture(scope="module")
def rlab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("record-property-lab"), "--s3-faults", "0") as lab:
        yield lab


# Where a run is stopped: the next request of a module on its way to the instance (or of the upload)
# is held by the lab's S3 proxy, then the run is interrupted. A run that never gets there just ends.
INTERRUPTIONS = {
    "ctrl-c after the release": "AnsiballZ_efs_usage",  # the step after the release (or rollback)
    "instance stopped before the release": "AnsiballZ_efs_release",  # a mirror's pull: AnsiballZ_s3_sync
    "kill -9 of the controller during the upload": "^PUT /%s/reefguide-efs/runs/",
}
# every stage and rollback in turn gets the next (the sequence of operations stays seed's)
IN_TURN = ["ctrl-c after the release", "instance stopped before the release",
           "kill -9 of the controller during the upload", None]


def run_interrupted(lab: Lab, how: str, *args: str) -> None:
    pattern = INTERRUPTIONS[how]
    if "mode=mirror" in args and how.startswith("instance"):
        pattern = "AnsiballZ_s3_sync"  # a mirror changes the destination in its pull: no release step
    lab.hold_next(pattern.replace("%s", re.escape(lab.bucket)))
    argv, env = playbook_command(lab.env, INVENTORY, *args)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not lab.holding() and proc.poll() is None:
            assert time.time() < deadline, "%s: never got there" % how
            time.sleep(0.1)
        if proc.poll() is None and how.startswith("ctrl-c"):
            os.killpg(proc.pid, signal.SIGINT)
        elif proc.poll() is None and how.startswith("kill -9"):
            os.kill(proc.pid, signal.SIGKILL)
        elif proc.poll() is None:
            lab.stop_instance()
    finally:
        lab.release_held()
    proc.wait(timeout=300)


def locked(lab: Lab) -> bool:
    return lab.client("s3").list_objects_v2(Bucket=lab.bucket, Prefix="reefguide-efs/lock.json")["KeyCount"] > 0


DESTS = ["data/reefguide/prop/p", "data/reefguide/prop/p/q", "data/reefguide/prop/r"]
STEPS = 8  # drawn from the seed; then one more: the removal of released data, interrupted
FINAL = ("remove", "data/reefguide/prop/p", "ctrl-c after the release")
VARIANTS = [{"a": "1\n", "d/b": "1\n"}, {"a": "2\n", "c": "2\n"}, {"d/b": "3\n", "e": "3\n"}]


@pytest.mark.parametrize("seed", [129])  # a sequence with every operation, mode and nesting
def test_random_sequences_of_our_operations_keep_every_record_true(rlab: Lab, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    turns = 0
    srcs = [make(tmp_path / ("v%d" % i), files) for i, files in enumerate(VARIANTS)]
    last: dict[str, tuple[Path, str]] = {}
    for n in range(STEPS + 1):
        how, mirrored = None, ""
        if n == STEPS:
            op, dest, how = FINAL
        else:
            op, dest = rng.choice(["stage", "stage", "stage", "rollback", "remove", "prune"]), rng.choice(DESTS)
        if op in ("stage", "rollback"):
            how, turns = IN_TURN[turns % len(IN_TURN)], turns + 1
        brk = ("-e", "break_lock=true") if locked(rlab) else ()  # what the operator does after an interruption
        before = released_data(rlab)
        if op == "stage":
            src, mode = rng.choice(srcs), rng.choice(["replace", "merge", "mirror"])
            args = ("-e", "src=%s" % src, "-e", "dest=%s" % dest, "-e", "mode=%s" % mode) + brk
            if how:
                run_interrupted(rlab, how, "stage_data.yml", *args)
            else:
                play(rlab, "stage_data.yml", *args)
            last[dest] = (src, mode)
            mirrored = dest if mode == "mirror" else ""
        elif op == "rollback" and how:
            run_interrupted(rlab, how, "rollback.yml", "-e", "dest=%s" % dest, *brk)
        elif op == "rollback":  # may have no earlier release: then it fails and changes nothing
            run_playbook(rlab.env, INVENTORY, "rollback.yml", "-e", "dest=%s" % dest, *brk)
        elif op == "remove" and how:
            run_interrupted(rlab, how, "teardown.yml", "-e", '{"remove": ["%s"]}' % dest, *brk)
        elif op == "remove":
            play(rlab, "teardown.yml", "-e", '{"remove": ["%s"]}' % dest, *brk)
        else:
            play(rlab, "teardown.yml", "-e", "keep=0", *brk)
        step = "step %d: %s %s%s" % (n, op, dest, ", %s" % how if how else "")
        assert_records_true(rlab, step)
        assert_no_released_data_lost(rlab, before, step, mirrored)
        # the same data again: nothing to do because EFS already holds it, or staged and then it does
        again = rng.choice(sorted(last)) if last else None
        if again:
            src, mode = last[again]
            before = released_data(rlab)
            out = stage(rlab, src, again, "-e", "mode=%s" % mode, *(("-e", "break_lock=true") if locked(rlab) else ()))
            got = efs_files(rlab, again)
            want = digests(src)
            if mode == "merge":
                assert {rel: got.get(rel) for rel in want} == want, (step, again, out[-2000:])
            else:
                assert got == want, (step, again, mode, NOTHING in out, out[-2000:])
            assert_records_true(rlab, step + ", then the same stage again")
            assert_no_released_data_lost(rlab, before, step + ", then the same stage again",
                                         again if mode == "mirror" else "")
