"""Every module's documentation renders with ansible-doc, as text (what a user reads) and as JSON,
and every description is prose (a stray ': ' in YAML turns a line into a mapping). One ansible-doc
call renders every module (a call costs a second of CPU); each module's test reads its own part."""

from __future__ import annotations

import functools
import json
import re
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


@functools.cache
def rendered_all(*args: str) -> subprocess.CompletedProcess:
    return ansible_doc(*args, *MODULES)


def rendered(module: str, *args: str) -> subprocess.CompletedProcess:
    """Every module in one call; when that call fails (one broken module fails it all), this
    module on its own, so that each test says whether its own module renders."""
    proc = rendered_all(*args)
    return proc if proc.returncode == 0 else ansible_doc(*args, module)


def errors_about(module: str, proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "ERROR" in line and module in line]


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_as_text(module: str) -> None:
    proc = rendered(module)
    assert not errors_about(module, proc), proc.stderr
    parts = re.split(r"^> MODULE (\S+) ", proc.stdout, flags=re.M)
    text = dict(zip(parts[1::2], parts[2::2])).get(module, "")
    assert "OPTIONS" in text and "EXAMPLES" in text, proc.stdout[-2000:] + proc.stderr


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_as_json_with_prose_descriptions(module: str) -> None:
    proc = rendered(module, "--json")
    assert not errors_about(module, proc), proc.stderr
    doc = json.loads(proc.stdout)[module]
    assert doc["doc"]["short_description"] and doc["doc"]["options"]
    assert doc["examples"].strip() and doc["return"]
    odd = [d for d in descriptions(doc["doc"]) + descriptions(doc["return"]) if not isinstance(d, str)]
    assert not odd, "descriptions that YAML read as something other than text: %r" % odd
