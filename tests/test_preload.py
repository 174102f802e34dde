"""callback_plugins/reefguide_preload.py parses the modules sent to the instance once per run, in
ansible-playbook before the workers fork: the payloads built from those parses are the same,
byte for byte, and a file edited since is parsed anew. The payloads carry each module_utils file
compiled too: Python of the controller's version imports the compiled files, any other the
sources, which are the same as without."""

from __future__ import annotations

import ast
import datetime
import hashlib
import importlib.util
import io
import subprocess
import sys
import zipfile
from pathlib import Path

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
    monkeypatch.setattr(module_common, "recursive_finder", module_common.recursive_finder)
    _AnsibleCollectionFinder()._install()
    module_utils_loader.add_directory(str(ROOT / "module_utils"))
    path = ROOT / "callback_plugins" / "reefguide_preload.py"
    spec = importlib.util.spec_from_file_location("reefguide_preload", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    _AnsibleCollectionFinder._remove()


def payload_zip(name: str) -> bytes:
    """What Ansible zips for library/<name>.py besides the module itself."""
    from ansible._internal._ansiballz import _builder

    out = io.BytesIO()
    source = (ROOT / "library" / (name + ".py")).read_bytes()
    with zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_DEFLATED) as zf:
        module_common.recursive_finder(name, "ansible.legacy." + name, source, zf, datetime.datetime(2026, 1, 1),
                                       _builder.ExtensionManager.create(task_vars={}))
    return out.getvalue()


def payload(name: str) -> dict[str, str]:
    """What Ansible zips for library/<name>.py: each file's name and SHA-256."""
    with zipfile.ZipFile(io.BytesIO(payload_zip(name))) as zf:
        return {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist()}


def imported_from(zip_path, *modules: str) -> list[str]:
    """The files a fresh Python (this one, no site-packages) imports modules from, with only the zip on its path."""
    code = "import sys; sys.path.insert(0, %r)\nfor m in %r: __import__(m); print(sys.modules[m].__file__)" % (
        str(zip_path), modules)
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


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


def test_payloads_carry_each_file_compiled_which_this_python_takes_and_another_skips(preload, tmp_path):
    assert preload._parse_module_ast_once()  # each payload below parses its files once, as in a run
    usual = payload("s3_sync")
    assert preload._send_bytecode_too()
    assert preload._send_bytecode_too(), "installed twice"
    both = payload("s3_sync")
    # the same sources, and beside each its compiled form
    assert {n: h for n, h in both.items() if not n.endswith(".pyc")} == usual
    assert {n + "c" for n in usual} == {n for n in both if n.endswith(".pyc")}
    wanted = ("ansible.module_utils.basic", "ansible.module_utils.reefguide.sync_pull")
    compiled = tmp_path / "compiled.zip"
    compiled.write_bytes(payload_zip("s3_sync"))
    assert all(f.endswith(".pyc") for f in imported_from(compiled, *wanted))
    # a Python of another version finds another magic number in each .pyc and compiles the source
    other = tmp_path / "other-python.zip"
    with zipfile.ZipFile(compiled) as src, zipfile.ZipFile(other, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, (b"\0\0\r\n" + data[4:]) if info.filename.endswith(".pyc") else data)
    assert all(f.endswith(".py") for f in imported_from(other, *wanted))
    # each file is compiled once per run, whatever module's payload takes it
    before = len(module_common.recursive_finder.compiled)
    payload("efs_release")
    assert len(module_common.recursive_finder.compiled) < before + 10


def test_a_cache_directory_keeps_the_compiled_files_for_the_next_run(preload, tmp_path):
    cache = tmp_path / "bytecode"
    assert preload._parse_module_ast_once()
    assert preload._send_bytecode_too(str(cache))
    first = payload("efs_mount")
    kept = sorted(cache.iterdir())
    assert kept and len(kept) == sum(n.endswith(".pyc") for n in first)
    # the next run (a fresh process: nothing in memory) takes them from the cache, compiling nothing;
    # a file whose source changed is compiled anew
    module_common.recursive_finder.compiled.clear()
    compiles = []
    real = preload.bytecode
    preload.bytecode = lambda name, source: compiles.append(name) or real(name, source)
    try:
        assert payload("efs_mount") == first
        assert compiles == []
        zf = zipfile.ZipFile(io.BytesIO(), "w")
        preload._WithBytecode(zf, {}, str(cache)).writestr(zipfile.ZipInfo("ansible/module_utils/x.py"), b"y = 2\n")
        assert compiles == ["ansible/module_utils/x.py"]
        assert len(list(cache.iterdir())) == len(kept) + 1
    finally:
        preload.bytecode = real


def test_payloads_a_run_built_are_kept_for_the_next_runs_until_a_file_they_are_built_from_changes(
        preload, monkeypatch, tmp_path):
    library, utils = tmp_path / "library", tmp_path / "module_utils" / "reefguide"
    library.mkdir()
    utils.mkdir(parents=True)
    (library / "m.py").write_text("from ansible.module_utils.reefguide import u\n")
    (utils / "u.py").write_text("X = 1\n")
    monkeypatch.setattr(preload.C, "DEFAULT_MODULE_PATH", [str(library)])
    monkeypatch.setattr(preload.C, "DEFAULT_MODULE_UTILS_PATH", [str(tmp_path / "module_utils")])
    run_caches = iter(tmp_path / ("run%d" % i) for i in range(10))

    def a_run() -> tuple:
        """A run's cache (a fresh ansiballz_cache) and the payload cache it finds."""
        monkeypatch.setattr(preload.C, "DEFAULT_LOCAL_TMP", str(next(run_caches)))
        return Path(preload.C.DEFAULT_LOCAL_TMP) / "ansiballz_cache", preload.PayloadCache(str(tmp_path / "kept"))

    built, cache = a_run()
    assert not cache.restore(), "nothing kept yet: the run parses and builds as ever"
    built.mkdir(parents=True)
    (built / "ansible.legacy.m-ZIP_DEFLATED-none").write_bytes(b"payload of m")
    (built / "ansible.legacy.m-ZIP_DEFLATED-none.lock").write_bytes(b"")
    cache.keep()
    nxt, cache = a_run()
    assert cache.restore()
    assert sorted(p.name for p in nxt.iterdir()) == ["ansible.legacy.m-ZIP_DEFLATED-none"]
    assert (nxt / "ansible.legacy.m-ZIP_DEFLATED-none").read_bytes() == b"payload of m"
    # an edited module_utils file (or module) makes another key: what was kept is not taken
    (utils / "u.py").write_text("X = 2\n")
    _, cache = a_run()
    assert not cache.restore()
    (utils / "u.py").write_text("X = 1\n")
    _, cache = a_run()
    assert cache.restore()
    (library / "m.py").write_text("from ansible.module_utils.reefguide import u  # edited\n")
    _, cache = a_run()
    assert not cache.restore()
