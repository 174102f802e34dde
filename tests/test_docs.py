"""Every module's documentation renders with ansible-doc and matches its argument spec."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import ROOT, VENV_BIN, ansible_env

MODULES = sorted(p.stem for p in (ROOT / "library").glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders(module: str) -> None:
    proc = subprocess.run([str(VENV_BIN / "ansible-doc"), "-M", str(ROOT / "library"), "--json", module],
                          cwd=ROOT, env=ansible_env(), capture_output=True, text=True)
    assert proc.returncode == 0 and "ERROR" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)[module]
    assert doc["doc"]["short_description"] and doc["doc"]["options"]
    assert doc["examples"].strip() and doc["return"]
