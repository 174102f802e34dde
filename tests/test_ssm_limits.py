"""The lab ends SSM sessions as Session Manager does: after the idle timeout (no input from
the client; output does not count) or the maximum session duration, killing the shell and
what it runs, while a daemon that detached itself survives."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT
from lab import Lab, running_lab

PLUGIN = str(ROOT / "lab" / "bin" / "session-manager-plugin")
IDLE = 3


@pytest.fixture(scope="module")
def strict_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("strict-lab"), "--ssm-idle-timeout", "%ds" % IDLE) as lab:
        lab.start_instance()
        yield lab


class Session:
    """One session driven as amazon.aws.aws_ssm drives it: StartSession, then the plugin on pipes."""

    def __init__(self, lab: Lab) -> None:
        response = lab.client("ssm").start_session(Target=lab.instance_id)
        response = {k: response[k] for k in ("SessionId", "TokenValue", "StreamUrl")}
        self.proc = subprocess.Popen([PLUGIN, json.dumps(response), lab.env["AWS_REGION"], "StartSession"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            self.output += chunk

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the session ended meanwhile

    def ended(self, within: float = 60) -> bool:
        try:
            self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            return False
        time.sleep(0.2)  # the reader thread drains the last output
        return True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def started_pid(lab: Lab, name: str, within: float = 30) -> int:
    """The pid a command in the session wrote to /tmp/<name>.pid (inside the instance)."""
    deadline = time.time() + within
    while time.time() < deadline:
        got = lab.instance_exec(["cat", "/tmp/%s.pid" % name])
        if got.returncode == 0 and got.stdout.strip():
            return int(got.stdout)
        time.sleep(0.1)
    raise AssertionError("the command never started in the session (no /tmp/%s.pid)" % name)


def alive(lab: Lab, pid: int) -> bool:
    stat = lab.instance_exec(["cat", "/proc/%d/stat" % pid])
    return stat.returncode == 0 and stat.stdout.rsplit(")", 1)[1].split()[0] != "Z"


def ssm_status(lab: Lab) -> dict:
    return lab.supervisor()["ssm"]


def test_status_shows_the_limits(strict_lab: Lab) -> None:
    ssm = ssm_status(strict_lab)
    assert ssm["idle_timeout"] == IDLE and ssm["max_duration"] == 0


def test_a_session_without_input_ends_and_its_commands_die_even_if_they_print(strict_lab: Lab) -> None:
    before = ssm_status(strict_lab)["sessions_ended"]["idle"]
    s = Session(strict_lab)
    try:
        s.send("sh -c 'echo $$ > /tmp/chatty.pid; while :; do echo tick; sleep 0.5; done' &\n")
        s.send("sh -c 'echo $$ > /tmp/silent.pid; exec sleep 300'\n")
        chatty, silent = started_pid(strict_lab, "chatty"), started_pid(strict_lab, "silent")
        assert s.ended(), "the idle session was never ended"
        assert b"Your session timed out due to inactivity and has been terminated." in s.output
        assert b"tick" in s.output  # it printed, and that did not keep the session alive
        assert not alive(strict_lab, silent) and not alive(strict_lab, chatty)
        assert ssm_status(strict_lab)["sessions_ended"]["idle"] == before + 1
    finally:
        s.close()


def test_a_session_that_gets_input_stays(strict_lab: Lab) -> None:
    s = Session(strict_lab)
    try:
        s.send("sh -c 'echo $$ > /tmp/busy.pid; exec sleep 300'\n")
        busy = started_pid(strict_lab, "busy")
        for _ in range(IDLE * 4):  # four idle timeouts, with input every second
            time.sleep(1)
            s.send("\n")
        assert s.proc.poll() is None and alive(strict_lab, busy)
        assert b"timed out" not in s.output
    finally:
        s.close()
        strict_lab.instance_exec(["pkill", "-F", "/tmp/busy.pid"])


def test_a_detached_daemon_outlives_its_session(strict_lab: Lab) -> None:
    s = Session(strict_lab)
    try:
        s.send("setsid sh -c 'echo $$ > /tmp/daemon.pid; exec sleep 300' </dev/null >/dev/null 2>&1 &\n")
        daemon = started_pid(strict_lab, "daemon")
        assert s.ended(), "the idle session was never ended"
        assert alive(strict_lab, daemon)
    finally:
        s.close()
        strict_lab.instance_exec(["pkill", "-F", "/tmp/daemon.pid"])


def test_the_maximum_duration_ends_a_session_whatever_its_input(strict_lab: Lab, tmp_path: Path) -> None:
    strict_lab.ctl("ssm-limits", "--idle-timeout", "0", "--max-duration", "%ds" % IDLE)
    s = Session(strict_lab)
    try:
        s.send("sh -c 'echo $$ > /tmp/long.pid; exec sleep 300'\n")
        long_running = started_pid(strict_lab, "long")
        for _ in range(120):  # input every half second, for at most a minute
            if s.proc.poll() is not None:
                break
            s.send("\n")
            time.sleep(0.5)
        assert s.ended(within=1), "the session outlived its maximum duration"
        assert b"maximum session duration" in s.output
        assert not alive(strict_lab, long_running)
        assert ssm_status(strict_lab)["sessions_ended"]["duration"] == 1
    finally:
        s.close()
        strict_lab.ctl("ssm-limits", "--idle-timeout", "%ds" % IDLE, "--max-duration", "0")
