"""Every module's documentation renders with ansible-doc, as text (what a user reads) and as JSON,
and every description is prose (a stray ': ' in YAML turns a line into a mapping)."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import ROOT, VENV_BIN, ansible_env

MODULES = sorted(p.stem for p in (ROOT / "library").glob("*.py"))


def ansible_doc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ansible-doc"), "-M", str(ROOT / "library"), *args],
                          cwd=ROOT, env=ansible_env(), capture_output=True, text=True)


def descriptions(node: object) -> list[object]:
    """Every description in a parsed DOCUMENTATION/RETURN tree, items of lists included."""
    found: list[object] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("description", "short_description"):
                found.extend(value if isinstance(value, list) else [value])
            found.extend(descriptions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(descriptions(item))
    return found


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_as_text(module: str) -> None:
    proc = ansible_doc(module)
    assert proc.returncode == 0 and "ERROR" not in proc.stderr, proc.stderr
    assert module in proc.stdout and "OPTIONS" in proc.stdout and "EXAMPLES" in proc.stdout


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_as_json_with_prose_descriptions(module: str) -> None:
    proc = ansible_doc("--json", module)
    assert proc.returncode == 0 and "ERROR" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)[module]
    assert doc["doc"]["short_description"] and doc["doc"]["options"]
    assert doc["examples"].strip() and doc["return"]
    odd = [d for d in descriptions(doc["doc"]) + descriptions(doc["return"]) if not isinstance(d, str)]
    assert not odd, "descriptions that YAML read as something other than text: %r" % odd
