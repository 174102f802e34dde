"""The molecule scenarios: the real playbooks against one lab, over amazon.aws.aws_ssm.

The scenarios share a lab, in this order, as an operator's deployment lives through them: each
one's prepare stages what it needs, and finds it live when an earlier scenario left it so
("Nothing to do"); failure's cleanup takes back what it broke. Run alone (-k), each stages all
it needs itself."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import ROOT, VENV_BIN
from lab import Lab, running_lab

# update first: it stages the whole of data/reefguide and diffs it against its source, which a
# data package staged before it would break
SCENARIOS = ["update", "stage", "failure", "check", "teardown"]


@pytest.fixture(scope="module")
def mlab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("molecule-lab")) as lab:
        yield lab


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, mlab: Lab, tmp_path) -> None:
    env = dict(mlab.env)
    env["PATH"] = str(VENV_BIN) + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["NO_COLOR"] = "1"
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run([str(VENV_BIN / "molecule"), "test", "-s", scenario], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    log = tmp_path / "molecule.log"
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, "molecule test -s %s failed (full log %s):\n%s" % (
        scenario, log, (proc.stdout + proc.stderr)[-6000:])
    # every session the playbooks opened was closed again
    assert mlab.supervisor()["sessions_open"] == 0
