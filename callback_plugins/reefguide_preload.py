"""Loads the amazon.aws SSM connection plugin (and so boto3) once, in the
controller's main process, before any task runs, and parses the AWS service
models the controller-side modules use into their shared botocore loader.

Ansible forks a worker per task and each worker loads the host's connection
plugin; imported in the parent, it is inherited by every fork instead of being
imported again by each (about 0.12 s of CPU per task of a run over SSM). The
modules that run inside the worker (action_plugins/reefguide_in_process.py)
build their clients from that loader: 0.015 s a client instead of 0.05-0.25 s
(module_utils/reefguide/aws.py).

It also parses the Python of the modules that go to the instance once: Ansible
builds each module's payload (AnsiballZ) in the worker that runs it, parsing the
module and every module_utils file it imports (91 files, about 2.3 s of CPU a
stage) although the same files serve every module of the run. Parsed in the
parent and kept by content, the workers find them parsed.

With REEFGUIDE_PAYLOAD_BYTECODE set (the lab sets it to a directory of its own,
which keeps the compiled files for the next runs: its instance runs the
controller's Python version) each module_utils file goes into a payload compiled
too, and the module starts without compiling its payload (zipimport caches
nothing): about 0.2 s of CPU less for each module and each async_wrapper. An
interpreter of another version compiles the source as before; on AWS (Amazon
Linux 2023's Python 3.9) the bytecode would only triple the payloads' bytes.

With it set to a directory, the payloads a run built are kept there too, and a
later run built from the same files takes them: no parse, no build.

All this is frozen out of the garbage collector's reach at each play's start
(gc.freeze, Python's advice before forking): a worker's collections would
otherwise walk every object it inherited, and copy the pages they touch."""

from __future__ import annotations

DOCUMENTATION = """
name: reefguide_preload
type: aggregate
short_description: import the SSM connection plugin once, before the forks
description:
  - Imports amazon.aws.aws_ssm (and boto3) in the controller's main process, so the
    per-task worker processes inherit it instead of importing it each.
  - Parses the models of the AWS services the controller-side modules call into the
    botocore loader they share, so each worker inherits them parsed.
  - Parses the modules sent to the instance, and the module_utils they import, once per run
    instead of once per module in each worker that builds a payload.
  - With REEFGUIDE_PAYLOAD_BYTECODE set (to 1, or to a directory that keeps the compiled files, as
    the lab does), puts each module_utils file in a payload compiled too, for an instance that runs
    the controller's Python version; with a directory, keeps the payloads there for the next runs.
  - Freezes what is alive at each play's start out of the garbage collector's reach, so the
    forked workers do not walk it.
  - Prints nothing and changes no result.
"""

import datetime
import gc
import glob
import hashlib
import importlib.util
import io
import marshal
import os
import sys
import zipfile
from typing import Callable

from ansible import constants as C
from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import action_loader, connection_loader, module_loader

# Ansible's own module that a run of ours sends beside the project's: async_wrapper runs each
# detached step (detached.py follows it with shell commands, not async_status).
SENT_WITH_OURS = ("async_wrapper",)
# A module with an action plugin of its own builds no payload (it runs in the worker, or is the
# action itself, efs_session), except these, which a run also starts async: the lock's heartbeat.
ALSO_SENT_ASYNC = ("deployment_lock",)
UNCHECKED_HASH_PYC = (1).to_bytes(4, "little")  # PEP 552 flags: hash-based, source not checked


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "reefguide_preload"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            connection_loader.get("amazon.aws.aws_ssm", class_only=True)
        except Exception:  # noqa: BLE001 - a missing collection is reported by the task that needs it
            pass
        self.warmed = False
        self.parse_once = _parse_module_ast_once()
        wanted = os.environ.get("REEFGUIDE_PAYLOAD_BYTECODE", "")
        if wanted:  # "1", or a directory that keeps the compiled files and payloads for the next runs
            _send_bytecode_too("" if wanted == "1" else wanted)
        self.payloads = PayloadCache(wanted) if wanted not in ("", "1") else None

    def v2_playbook_on_play_start(self, play):
        # a play on the controller alone (molecule's create and verify, a test's set-up) calls no
        # AWS module in the worker and sends none: the parses (1 s) are for plays on a deployment
        if not self.warmed and not all(h in ("localhost", "127.0.0.1") for h in (play.hosts or [])):
            self.warmed = True
            # payloads an earlier run built from the same files need no parse; any other is built as ever
            if self.parse_once and not (self.payloads and self.payloads.restore()):
                _parse_sent_modules()
            try:
                in_process = sys.modules[action_loader.get("reefguide_in_process", class_only=True).__module__]
                in_process.warm_aws_models()
            except Exception:  # noqa: BLE001 - no boto3 here, or another module_utils: each module builds its own
                pass
        # What is alive now lives as long as the run. Frozen, it is out of the collector's reach, so a
        # worker forked from here neither scans it nor copies its pages by touching it (about 2 s of
        # CPU a stage)
        gc.freeze()

    def v2_playbook_on_stats(self, stats):
        if self.payloads and self.warmed:
            self.payloads.keep()


def _replace_once(name: str, kept: str, wrap: Callable[[Callable], Callable]) -> bool:
    """Puts wrap(module_common.<name>) in its place, once (the wrapper's attribute kept marks it).
    False when this ansible-core has no such function."""
    try:
        from ansible.executor import module_common
        original = getattr(module_common, name)
    except (ImportError, AttributeError):
        return False
    if getattr(original, kept, None) is None:
        setattr(module_common, name, wrap(original))
    return True


def _parse_module_ast_once() -> bool:
    """Keeps each parse of module_common._compile_module_ast, keyed by name and source text, so a
    file is parsed once per run, whatever module imports it. The tree is only read afterwards
    (ModuleDepFinder visits it). False when this ansible-core has no such function."""

    def wrap(parse: Callable) -> Callable:
        parsed: dict = {}

        def parse_once(module_name, source_code):
            key = (module_name, bytes(source_code))
            tree = parsed.get(key)
            if tree is None:
                tree = parsed[key] = parse(module_name, source_code)
            return tree

        parse_once.parsed = parsed
        return parse_once

    return _replace_once("_compile_module_ast", "parsed", wrap)


class PayloadCache:
    """The modules' payloads a run built (Ansible's per-run ansiballz_cache), kept in
    root/payloads/<key> for the runs after it, which take them instead of building them: no parse
    in ansible-playbook, no build in a worker. The key changes with any file a payload can be built
    from: ansible-core's version, this Python, this callback, and every file of the module and
    module_utils paths."""

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "payloads", payload_key())
        self.run_cache = os.path.join(C.DEFAULT_LOCAL_TMP, "ansiballz_cache")

    def restore(self) -> bool:
        """Copies the kept payloads into this run's cache; False when none are kept."""
        try:
            names = [n for n in os.listdir(self.dir) if not n.endswith(".tmp")]  # .tmp: a copy cut short
        except OSError:
            return False
        os.makedirs(self.run_cache, exist_ok=True)
        for name in names:
            _copy_atomically(os.path.join(self.dir, name), os.path.join(self.run_cache, name))
        return bool(names)

    def keep(self) -> None:
        """Keeps what this run built that is not kept yet (a killed run keeps nothing)."""
        try:
            names = [n for n in os.listdir(self.run_cache) if not n.endswith((".lock", "-part", ".tmp"))]
            os.makedirs(self.dir, exist_ok=True)
            for name in names:
                if not os.path.exists(os.path.join(self.dir, name)):
                    _copy_atomically(os.path.join(self.run_cache, name), os.path.join(self.dir, name))
        except OSError:
            pass  # a cache it cannot write costs the next run a build, nothing else


def payload_key() -> str:
    from ansible.release import __version__

    digest = hashlib.sha256(__version__.encode() + b"\0" + importlib.util.MAGIC_NUMBER)
    with open(__file__, "rb") as fh:
        digest.update(fh.read())
    for top in list(C.DEFAULT_MODULE_PATH) + list(C.DEFAULT_MODULE_UTILS_PATH):
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(root, name)
                with open(path, "rb") as fh:
                    digest.update(path.encode() + b"\0" + fh.read() + b"\0")
    return digest.hexdigest()[:32]


def _copy_atomically(src: str, dst: str) -> None:
    with open(src, "rb") as fh:
        _write_atomically(dst, fh.read())


def _write_atomically(path: str, data: bytes) -> None:
    """Writes path whole or not at all (a reader, or a run killed meanwhile, never sees half of it)."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _parse_sent_modules() -> None:
    """Walks the imports of every module in the library path that is sent (not run in the worker)
    and of SENT_WITH_OURS, as the payload builder does, into a payload that is thrown away: their
    parses stay for the forks."""
    from ansible._internal._ansiballz import _builder
    from ansible.executor import module_common

    paths = [os.path.join(d, "*.py") for d in C.DEFAULT_MODULE_PATH if os.path.isdir(d)]
    modules = {os.path.basename(f)[:-3]: f for p in paths for f in glob.glob(p)}
    # half the parses (about 1 s of CPU a run) were of modules no payload is built for
    modules = {name: path for name, path in modules.items()
               if name in ALSO_SENT_ASYNC or not action_loader.has_plugin(name)}
    for name in SENT_WITH_OURS:
        found = module_loader.find_plugin(name)
        if found:
            modules[name] = found
    extensions = _builder.ExtensionManager.create(task_vars={})
    now = datetime.datetime.now()
    for name, path in sorted(modules.items()):
        try:
            with open(path, "rb") as fh:
                source = fh.read()
            with zipfile.ZipFile(io.BytesIO(), mode="w") as throwaway:
                module_common.recursive_finder(name, "ansible.legacy." + name, source, throwaway, now, extensions)
        except Exception:  # noqa: BLE001 - not a module the builder takes: its worker parses it as ever
            continue



def bytecode(name: str, source: bytes) -> bytes:
    """The .pyc of source for this Python: unchecked and hash-based (PEP 552), so zipimport takes it
    whatever the dates in the zip; empty when it does not compile (the source goes alone)."""
    try:
        code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        return b""
    return importlib.util.MAGIC_NUMBER + UNCHECKED_HASH_PYC + importlib.util.source_hash(source) + marshal.dumps(code)


class _WithBytecode:
    """A payload's zip that takes each .py written to it with its .pyc beside it. The .pyc files are
    kept by name and content for the run, and in cache_dir (when given) for the runs after it."""

    def __init__(self, zf: zipfile.ZipFile, compiled: dict, cache_dir: str) -> None:
        self._zf, self._compiled, self._cache_dir = zf, compiled, cache_dir

    def _pyc(self, name: str, source: bytes) -> bytes:
        key = (name, source)
        pyc = self._compiled.get(key)
        if pyc is not None:
            return pyc
        path = None
        if self._cache_dir:
            digest = hashlib.sha256(importlib.util.MAGIC_NUMBER + name.encode() + b"\0" + source).hexdigest()
            path = os.path.join(self._cache_dir, digest + ".pyc")
            try:
                with open(path, "rb") as fh:
                    pyc = self._compiled[key] = fh.read()
                return pyc
            except OSError:
                pass
        pyc = self._compiled[key] = bytecode(name, source)
        if path:
            try:
                os.makedirs(self._cache_dir, exist_ok=True)
                _write_atomically(path, pyc)
            except OSError:
                pass  # a cache it cannot write costs a compile next run, nothing else
        return pyc

    def writestr(self, zinfo, data, *args, **kwargs):
        self._zf.writestr(zinfo, data, *args, **kwargs)
        name = getattr(zinfo, "filename", zinfo)
        if isinstance(zinfo, zipfile.ZipInfo) and name.endswith(".py"):
            pyc = self._pyc(name, bytes(data))
            if pyc:
                info = zipfile.ZipInfo(name + "c", date_time=zinfo.date_time)
                info.compress_type = zinfo.compress_type
                self._zf.writestr(info, pyc)

    def __getattr__(self, attr):
        return getattr(self._zf, attr)


def _send_bytecode_too(cache_dir: str = "") -> bool:
    """Puts each module_utils file of a payload in it twice: as source, and compiled by this
    controller's Python. zipimport compiles every file of a payload each time a module starts (about
    0.2 s of CPU for a module with ansible.module_utils.basic, and as much for async_wrapper): an
    interpreter of the controller's minor version takes the compiled file instead; any other finds
    another magic number and compiles the source as before. Each file is compiled once per run, in
    the parent when the preload walks the sent modules, or once for all runs with a cache_dir.
    False when this ansible-core has no recursive_finder."""

    def wrap(find: Callable) -> Callable:
        compiled: dict = {}

        def find_with_bytecode(module_name, module_fqn, module_data, zf, *args, **kwargs):
            return find(module_name, module_fqn, module_data, _WithBytecode(zf, compiled, cache_dir), *args, **kwargs)

        find_with_bytecode.compiled = compiled
        return find_with_bytecode

    return _replace_once("recursive_finder", "compiled", wrap)
