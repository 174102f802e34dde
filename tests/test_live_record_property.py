"""The record of what is live never lies, as a property: random sequences of our operations (stage in
every mode, rollback, remove, prune) on nested destinations, and after each step every record agrees
with EFS, and the same stage again either does nothing because EFS holds it, or stages and then it
does (docs/reliability.md, "The record of what is live"; the named scenarios are test_live_record.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from helpers import make_tree as make
from helpers import run_playbook
from lab import Lab, running_lab
from live_records import INVENTORY, NOTHING, assert_records_true, digests, efs_files, play, stage


@pytest.fixture(scope="module")
def rlab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("record-property-lab")) as lab:
        yield lab


DESTS = ["data/reefguide/prop/p", "data/reefguide/prop/p/q", "data/reefguide/prop/r"]
VARIANTS = [{"a": "1\n", "d/b": "1\n"}, {"a": "2\n", "c": "2\n"}, {"d/b": "3\n", "e": "3\n"}]


@pytest.mark.parametrize("seed", [129])  # a sequence with every operation, mode and nesting
def test_random_sequences_of_our_operations_keep_every_record_true(rlab: Lab, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    srcs = [make(tmp_path / ("v%d" % i), files) for i, files in enumerate(VARIANTS)]
    last: dict[str, tuple[Path, str]] = {}
    for n in range(8):
        op, dest = rng.choice(["stage", "stage", "stage", "rollback", "remove", "prune"]), rng.choice(DESTS)
        if op == "stage":
            src, mode = rng.choice(srcs), rng.choice(["replace", "merge", "mirror"])
            stage(rlab, src, dest, "-e", "mode=%s" % mode)
            last[dest] = (src, mode)
        elif op == "rollback":  # may have no earlier release: then it fails and changes nothing
            run_playbook(rlab.env, INVENTORY, "rollback.yml", "-e", "dest=%s" % dest)
        elif op == "remove":
            play(rlab, "teardown.yml", "-e", '{"remove": ["%s"]}' % dest)
        else:
            play(rlab, "teardown.yml", "-e", "keep=0")
        step = "step %d: %s %s" % (n, op, dest)
        assert_records_true(rlab, step)
        # the same data again: nothing to do because EFS already holds it, or staged and then it does
        again = rng.choice(sorted(last)) if last else None
        if again:
            src, mode = last[again]
            out = stage(rlab, src, again, "-e", "mode=%s" % mode)
            got = efs_files(rlab, again)
            want = digests(src)
            if mode == "merge":
                assert {rel: got.get(rel) for rel in want} == want, (step, again, out[-2000:])
            else:
                assert got == want, (step, again, mode, NOTHING in out, out[-2000:])
            assert_records_true(rlab, step + ", then the same stage again")
