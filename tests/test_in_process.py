"""A module of library/ that runs on the controller runs inside the task's worker
(action_plugins/reefguide_in_process.py): no new Python, and the same result, failure and
check-mode answer as the same module run the usual way (forced here by a task environment)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from helpers import ROOT, VENV_BIN, ansible_env

CASES = {
    "accepted": {"dest": "data/reefguide/x"},
    "refused": {"dest": "../outside"},
    "archive missing": {"dest": "data/reefguide/x", "src_suffix": "/missing.tar.gz"},
}


def playbook(tmp_path: Path, usual_way: bool, check: bool) -> Path:
    """stage_request on localhost for every case; usual_way sets a task environment, which the
    in-process path leaves to a Python of its own."""
    tasks = []
    for name, case in CASES.items():
        task: dict[str, Any] = {
            "name": name,
            "stage_request": {"src": str(tmp_path / "src") + case.get("src_suffix", ""), "dest": case["dest"],
                              "run_id": "20261206T000000Z-test"},
            "delegate_to": "localhost",
            "ignore_errors": True,
            "register": "got",
        }
        if usual_way:
            task["environment"] = {"REEFGUIDE_TEST_USUAL_WAY": "1"}
        tasks += [task, {"name": "result of " + name, "ansible.builtin.debug": {"var": "got"}}]
    path = tmp_path / ("usual.yml" if usual_way else "here.yml")
    path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "check_mode": check,
                                 "tasks": tasks}]))
    return path


def run(tmp_path: Path, usual_way: bool, check: bool = False) -> tuple[dict[str, Any], str]:
    """(case -> registered result, -vvv log) of one run of the playbook: results from the json
    callback, the -vvv lines from the log file."""
    env = ansible_env()
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    log = tmp_path / ("usual.log" if usual_way else "here.log")
    env["ANSIBLE_LOG_PATH"] = str(log)
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-vvv",
                           str(playbook(tmp_path, usual_way, check))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    # the json document is what follows the -vvv lines on stdout
    doc = json.loads(proc.stdout[proc.stdout.index("\n{\n") + 1:] if not proc.stdout.startswith("{") else proc.stdout)
    results = {}
    for task in doc["plays"][0]["tasks"]:
        if task["task"]["name"] in CASES:
            res = dict(task["hosts"]["localhost"])
            for key in ("invocation", "_ansible_no_log", "_ansible_delegated_vars", "warnings"):
                res.pop(key, None)
            results[task["task"]["name"]] = res
    return results, log.read_text()


def test_a_controller_module_runs_in_the_worker_with_the_same_results(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("data\n")
    here, here_log = run(tmp_path, usual_way=False)
    usual, usual_log = run(tmp_path, usual_way=True)
    assert "AnsiballZ_stage_request" in usual_log  # the usual way: a Python of its own
    assert "AnsiballZ_stage_request" not in here_log, here_log[-3000:]
    assert here == usual
    assert not here["accepted"].get("failed") and here["accepted"]["dest"] == "data/reefguide/x"
    assert here["refused"]["failed"] and "contains '..'" in here["refused"]["msg"]
    assert here["archive missing"]["failed"]


def test_check_mode_answers_the_same_in_the_worker(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    here, _ = run(tmp_path, usual_way=False, check=True)
    usual, _ = run(tmp_path, usual_way=True, check=True)
    assert here == usual
