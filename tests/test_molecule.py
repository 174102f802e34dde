"""The molecule scenarios: the real playbooks against a fresh lab each, over amazon.aws.aws_ssm."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import ROOT, VENV_BIN
from lab import Lab

SCENARIOS = ["stage", "update", "failure", "teardown", "check"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, tmp_path) -> None:
    lab = Lab(tmp_path / "lab").up("--boot-delay", "1")
    try:
        env = dict(lab.env)
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
        assert lab.supervisor()["sessions_open"] == 0
    finally:
        lab.down()
