"""What runs on the instance runs on the instance's python: Amazon Linux 2023, which ReefGuide's
management instance runs, has python3 3.9, while the lab's instance runs the machine's own (3.11).
The modules and the module_utils they carry to the instance are checked statically (vermin) for
anything newer than 3.9: syntax, standard-library names, keyword arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import ROOT, VENV_BIN

INSTANCE_PYTHON = "3.9"
# the modules (those run on the instance, and s3_sync, on both sides) and everything they import
ON_THE_INSTANCE = [ROOT / "library", ROOT / "module_utils", ROOT / "scripts" / "reefguide-sync"]


def vermin(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "vermin"), "-t=%s-" % INSTANCE_PYTHON, "--violations", "-q",
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_everything_that_runs_on_the_instance_needs_no_more_than_python_3_9() -> None:
    run = vermin(*ON_THE_INSTANCE)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_check_finds_what_python_3_9_lacks(tmp_path: Path) -> None:
    newer = tmp_path / "newer.py"
    newer.write_text("def pairs(a, b):\n    return list(zip(a, b, strict=True))\n\n\n"
                     "def kind(x):\n    match x:\n        case 1:\n            return 'one'\n")
    run = vermin(newer)
    assert run.returncode != 0 and "3.10" in run.stdout, run.stdout + run.stderr
