"""Run the project's modules the way a playbook does: through ansible, on
localhost, with the repository's ansible.cfg (so library/ and module_utils/
resolve) and the JSON callback, and return the module's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import ansible

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def ansible_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        PATH=str(VENV_BIN) + os.pathsep + env.get("PATH", ""),
    )
    if extra:
        env.update(extra)
    return env


def playbook_command(lab_env: dict[str, str], inventory: Path, *args: str,
                     env: Optional[dict[str, str]] = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of ansible-playbook with human-readable output (what users read); run from ROOT."""
    full = ansible_env(lab_env)
    full["ANSIBLE_STDOUT_CALLBACK"] = "default"
    full.update(env or {})
    return [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), *args], full


def run_playbook(lab_env: dict[str, str], inventory: Path, *args: str, timeout: float = 600,
                 env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """ansible-playbook from the repository root, human-readable output (what users read)."""
    argv, full = playbook_command(lab_env, inventory, *args, env=env)
    return subprocess.run(argv, cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


def run_module(
    name: str,
    args: dict[str, Any],
    check: bool = False,
    diff: bool = False,
    env: Optional[dict[str, str]] = None,
    python: Optional[str] = None,
    become: bool = False,
    wrap: Optional[list[str]] = None,
) -> dict[str, Any]:
    """Result dict of one module call on localhost ('failed' set on failure).
    python: the interpreter the module runs in (default this one). wrap: argv
    prefix the module runs under (e.g. nsenter into a test's private mount
    namespace). A module with no action plugin, run as this user, runs without
    the CLI (tests/module_direct.py)."""
    if not become and not has_action_of_its_own(name):
        return run_module_direct(name, args, check, diff, env, python, wrap)
    cmd = list(wrap or []) + [
        str(VENV_BIN / "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        name,
        "-a",
        json.dumps(args),
        "-e",
        "ansible_python_interpreter=%s" % (python or sys.executable),
    ]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if become:
        cmd.append("--become")
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(env), capture_output=True, text=True)
    try:
        doc = json.loads(proc.stdout)
        result = doc["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as exc:
        raise no_result("ansible", proc, exc)
    return result


def has_action_of_its_own(module: str) -> bool:
    """True when an action plugin does the module's work (efs_session); one that only
    runs the module in the worker (reefguide_in_process) does not count."""
    path = ROOT / "action_plugins" / (module + ".py")
    return path.exists() and "reefguide_in_process" not in path.read_text()


def no_result(what: str, proc: subprocess.CompletedProcess, exc: Exception) -> AssertionError:
    """The failure of a module call that printed no JSON result, with what it printed."""
    return AssertionError("%s produced no JSON result (rc=%s): %s\nstdout: %s\nstderr: %s"
                          % (what, proc.returncode, exc, proc.stdout[-3000:], proc.stderr[-3000:]))


def run_module_direct(name: str, args: dict[str, Any], check: bool, diff: bool, env: Optional[dict[str, str]],
                      python: Optional[str] = None, wrap: Optional[list[str]] = None) -> dict[str, Any]:
    """What run_module returns, from the module run by tests/module_direct.py."""
    internal = {"_ansible_check_mode": check, "_ansible_diff": diff, "_ansible_module_name": name}
    full_env = ansible_env(env)
    if python and python != sys.executable:  # it has no ansible: the controller's, as AnsiballZ ships it
        full_env["REEFGUIDE_CONTROLLER_ANSIBLE"] = os.path.dirname(ansible.__file__)
    proc = subprocess.run(list(wrap or []) + [python or sys.executable, str(ROOT / "tests" / "module_direct.py"), name],
                          cwd=ROOT, input=json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, **internal)}),
                          env=full_env, capture_output=True, text=True)
    try:
        result = json.loads(proc.stdout)
    except ValueError as exc:
        raise no_result("module %s" % name, proc, exc)
    result.setdefault("changed", False)  # as Ansible's task executor does
    result.pop("invocation", None)
    return result


def tree(root: Path | str) -> dict[str, bytes]:
    """relative path (bytes-exact, via os.fsencode) -> content of every file below root, symlinks read through."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Write files (relative path -> text) below root; root."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root
