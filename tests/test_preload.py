"""callback_plugins/reefguide_preload.py parses the modules sent to the instance once per run, in
ansible-playbook before the workers fork: the payloads built from those parses are the same,
byte for byte, and a file edited since is parsed anew."""

from __future__ import annotations

import ast
import datetime
import hashlib
import importlib.util
import io
import zipfile

import pytest
from ansible.executor import module_common

from helpers import ROOT


@pytest.fixture()
def preload(monkeypatch):
    """The callback's module, with Ansible's collection loader set up as ansible-playbook does,
    and module_common's parser put back afterwards."""
    from ansible.plugins.loader import module_utils_loader
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    monkeypatch.setattr(module_common, "_compile_module_ast", module_common._compile_module_ast)
    _AnsibleCollectionFinder()._install()
    module_utils_loader.add_directory(str(ROOT / "module_utils"))
    path = ROOT / "callback_plugins" / "reefguide_preload.py"
    spec = importlib.util.spec_from_file_location("reefguide_preload", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    _AnsibleCollectionFinder._remove()


def payload(name: str) -> dict[str, str]:
    """What Ansible zips for library/<name>.py: each file's name and SHA-256."""
    from ansible._internal._ansiballz import _builder

    out = io.BytesIO()
    source = (ROOT / "library" / (name + ".py")).read_bytes()
    with zipfile.ZipFile(out, mode="w") as zf:
        module_common.recursive_finder(name, "ansible.legacy." + name, source, zf, datetime.datetime(2026, 1, 1),
                                       _builder.ExtensionManager.create(task_vars={}))
    with zipfile.ZipFile(out) as zf:
        return {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist()}


def test_payloads_built_from_the_parses_made_before_the_fork_are_the_same(preload, monkeypatch):
    monkeypatch.setattr(preload.C, "DEFAULT_MODULE_PATH", [str(ROOT / "library")])
    usual = {name: payload(name) for name in ("efs_release", "s3_sync")}
    assert preload._parse_module_ast_once()
    preload._parse_sent_modules()
    parsed = module_common._compile_module_ast.parsed
    assert any(name == "ansible.module_utils.basic" for name, _ in parsed), "the warm parsed nothing"
    assert any(name == "ansible.module_utils.reefguide.sync_push" for name, _ in parsed)
    for name, files in usual.items():
        assert payload(name) == files, name
        assert "ansible/module_utils/reefguide/__init__.py" in files


def test_a_file_is_parsed_once_and_an_edited_one_again(preload):
    assert preload._parse_module_ast_once()
    parse = module_common._compile_module_ast
    first = parse("ansible.module_utils.reefguide.x", b"import os\n")
    assert parse("ansible.module_utils.reefguide.x", b"import os\n") is first
    edited = parse("ansible.module_utils.reefguide.x", b"import json\n")
    assert [a.name for node in ast.walk(edited) if isinstance(node, ast.Import) for a in node.names] == ["json"]
    assert preload._parse_module_ast_once(), "installed twice"
    assert module_common._compile_module_ast is parse
