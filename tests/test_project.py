"""The project's own promises: collections, pins, layout."""

from __future__ import annotations

import json
import subprocess

import yaml
from ansible.galaxy.dependency_resolution.versioning import meets_requirements

from helpers import ROOT, VENV_BIN


def installed_collections() -> dict[str, str]:
    out = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "list", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, str] = {}
    for colls in json.loads(out).values():
        for name, meta in colls.items():
            found.setdefault(name, meta["version"])
    return found


def test_installed_collections_satisfy_requirements_yml() -> None:
    wanted = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
    have = installed_collections()
    for req in wanted:
        assert req["name"] in have, "%s is not installed" % req["name"]
        assert meets_requirements(have[req["name"]], req["version"]), (req, have[req["name"]])


def test_python_dependencies_are_pinned() -> None:
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines and all("==" in ln for ln in lines), [ln for ln in lines if "==" not in ln]


def test_entry_points_and_layout_exist() -> None:
    for path in ("stage_data.yml", "teardown.yml", "rollback.yml", "ansible.cfg", "requirements.yml", "playbooks",
                 "roles",
                 "library", "module_utils", "inventory", "molecule", "lab/labctl", ".ci/run", "README.md",
                 "action_plugins"):
        assert (ROOT / path).exists(), path
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in (ROOT / "README.md").read_text()
