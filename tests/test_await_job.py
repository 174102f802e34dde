"""await_job (the wait for a background task, e.g. the instance's start): it ends at the first poll
that fails, instead of polling a status that can never come until its timeout."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import ROOT, VENV_BIN, ansible_env


def await_job(tmp_path: Path, library: Path, jid: str) -> dict:
    env = ansible_env({"ANSIBLE_LIBRARY": "%s:%s" % (library, ROOT / "library"),
                       "ANSIBLE_ASYNC_DIR": str(tmp_path / "async")})
    play = tmp_path / "wait.yml"
    play.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "wait", "await_job": {"jid": jid, "timeout": 600, "delay": 0.1}, "register": "waited",
         "ignore_errors": True},
        {"name": "show", "ansible.builtin.debug": {"var": "waited"}}]}]))
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    tasks = json.loads(run.stdout)["plays"][0]["tasks"]
    return tasks[0]["hosts"]["localhost"]


def test_a_poll_that_crashes_ends_the_wait_at_once(tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    # async_status itself breaks (a broken interpreter, a bad install): its answer says nothing of the job
    (library / "async_status.py").write_text("raise RuntimeError('async_status is broken here')\n")
    result = await_job(tmp_path, library, "123.456")
    assert result["failed"] and result["polls"] == 1, result
    assert "async_status is broken here" in json.dumps(result), result


def test_a_job_that_does_not_exist_ends_the_wait_at_once(tmp_path: Path) -> None:
    (tmp_path / "library").mkdir()
    result = await_job(tmp_path, tmp_path / "library", "123.456")
    assert result["failed"] and result["polls"] == 1 and "could not find job" in result["msg"], result
