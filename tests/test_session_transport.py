"""The pure parts of "a session that ended is not a job that died" (no lab): the end markers of
the remote part's calls, the guard that turns aws_ssm's rc None into a cut, the idempotent
start's claim and probe (run by a real /bin/sh in a temporary directory), and the lab's
session cuts (the wrapped commands the stand-in recognises, the output it withholds)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible_collections.amazon.aws.plugins.plugin_utils.ssm.terminalmanager import TerminalManager

from helpers import ROOT

sys.path.insert(0, str(ROOT / "lab"))
from reefguide_lab.session_cuts import OutputCut, SessionCuts, wrapped_commands  # noqa: E402


def efs_session() -> Any:
    spec = importlib.util.spec_from_file_location("efs_session_under_test", ROOT / "action_plugins" / "efs_session.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


PLUGIN = efs_session()
transport, detached = PLUGIN.transport, PLUGIN.detached


def sh(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=30)


def test_output_ends_with_its_own_marker_or_is_torn() -> None:
    marker = transport.end_marker()
    assert marker != transport.end_marker()
    whole = sh(transport.with_end_marker("echo alive; false", marker)).stdout
    assert transport.before_end_marker(whole, marker).strip() == "alive"
    assert transport.before_end_marker(whole[: whole.index(marker) + 3], marker) is None  # cut in the marker
    assert transport.before_end_marker("alive\n", marker) is None  # no marker: nothing to conclude
    assert transport.before_end_marker("", marker) is None
    assert transport.before_end_marker(whole.replace(marker, transport.end_marker()), marker) is None


class EndedConnection:
    """aws_ssm's answer when the session-manager-plugin exits mid-command: rc None, partial output."""

    def __init__(self, answers: list[tuple[Any, str, str]]) -> None:
        self.answers, self.closed = answers, 0

    def exec_command(self, cmd: str, in_data: Any = None, sudoable: bool = True) -> tuple[Any, str, str]:
        return self.answers.pop(0)

    def close(self) -> None:
        self.closed += 1


def test_a_command_without_exit_status_raises_a_cut_and_closes_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = EndedConnection([(None, '{"star', ""), (0, "ok", "")])
    transport.guard_connection(conn)
    transport.guard_connection(conn)  # once per connection
    with pytest.raises(transport.SessionCut, match="ended in the middle of a command"):
        conn.exec_command("cat job")
    assert conn.closed == 1
    assert conn.exec_command("cat job") == (0, "ok", "")
    monkeypatch.setattr(transport, "PAUSE", 0.0)
    answers = iter([None, {"stdout": "x"}])
    assert transport.ask_again("a poll", lambda: next(answers)) == {"stdout": "x"}

    def always_cut() -> None:
        raise transport.SessionCut("the SSM session ended in the middle of a command")
    with pytest.raises(AnsibleActionFail, match="a poll: the SSM session ended in the middle of it 3 times running "
                                                ".*; the job goes on"):
        transport.ask_again("a poll", always_cut, attempts=3, then="the job goes on")


def test_a_start_sent_twice_runs_once_and_the_second_finds_the_claim(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detached, "JOBS_DIR", str(tmp_path / "jobs"))
    token = "0123abcd0123abcd"
    start = "mkdir %s/j42.7 && echo started" % detached.claim_dir(token)  # what async_wrapper leaves
    first = sh(detached.guarded_start(start, token))
    again = sh(detached.guarded_start(start, token))
    assert first.stdout.strip() == "started"
    assert json.loads(again.stdout) == {detached.CLAIMED: token}
    claimed, job, doc, running = detached.parse_started(sh(detached.started_probe(token)).stdout)
    assert (claimed, running) == (True, []) and job is None  # a directory is not a job file
    (tmp_path / "jobs" / token / "j42.7").rmdir()
    (tmp_path / "jobs" / token / "j42.8.tmp").write_text("{}")
    assert detached.parse_started(sh(detached.started_probe(token)).stdout)[1] is None  # not written yet
    (tmp_path / "jobs" / token / "j42.8").write_text('{"started": true, "finished": false}')
    claimed, job, doc, running = detached.parse_started(sh(detached.started_probe(token)).stdout)
    assert claimed and job == "%s/j42.8" % detached.claim_dir(token) and not detached.finished(doc)
    assert detached.parse_started(sh(detached.started_probe("ffff0000ffff0000")).stdout) == (False, None, None, [])
    # a process of the start still running (its environment names the token's directory) is named;
    # another process with that environment (the probe's own shells, once seen so) is not
    env = dict(os.environ, ANSIBLE_ASYNC_DIR=detached.claim_dir(token))
    wrapper = [sys.executable, "-c", "import time; time.sleep(30)", "async_wrapper.py", "j1"]
    with subprocess.Popen(wrapper, env=env) as proc, subprocess.Popen(["sleep", "30"], env=env) as other:
        try:
            probe = subprocess.run(["/bin/sh", "-c", detached.started_probe(token)], env=env, capture_output=True,
                                   text=True, timeout=30)
            running = detached.parse_started(probe.stdout)[3]
        finally:
            proc.kill()
            other.kill()
    assert running == ["%d %s" % (proc.pid, " ".join(wrapper))], running


def test_a_job_that_ends_while_the_probe_looks_is_read_finished_not_killed(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The job ends just as the probe scans the processes (a grep on PATH that first ends it, as a
    loaded instance once did): the probe then reads its job file finished, not "started, and no
    process of it left", which would start a second pull beside the first's result."""
    monkeypatch.setattr(detached, "JOBS_DIR", str(tmp_path / "jobs"))
    token = "4567abcd4567abcd"
    job_dir = tmp_path / "jobs" / token
    job_dir.mkdir(parents=True)
    job = job_dir / "j7.1"
    job.write_text('{"started": true, "finished": false}')
    env = dict(os.environ, ANSIBLE_ASYNC_DIR=detached.claim_dir(token))
    wrapper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "async_wrapper.py", "j7"], env=env)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "grep").write_text("#!/bin/sh\nkill %d; while kill -0 %d 2>/dev/null; do sleep 0.05; done\n"
                                  "printf '%%s' '{\"finished\": true, \"changed\": true}' > %s\nexec %s \"$@\"\n"
                                  % (wrapper.pid, wrapper.pid, job, shutil.which("grep")))
    (bin_dir / "grep").chmod(0o755)
    try:
        threading.Thread(target=wrapper.wait, daemon=True).start()  # reaped as soon as it is killed
        probe = subprocess.run(["/bin/sh", "-c", detached.started_probe(token)], capture_output=True, text=True,
                               env=dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"])), timeout=30)
    finally:
        wrapper.kill()
    claimed, path, doc, running = detached.parse_started(probe.stdout)
    assert (claimed, path, running) == (True, str(job), []), probe.stdout
    assert detached.finished(doc), probe.stdout  # followed: its result is read, nothing started again


def test_a_start_cut_by_a_session_end_leaves_nothing_in_the_tasks_environment() -> None:
    """Ansible's _execute_module adds ANSIBLE_ASYNC_DIR to the task's environment for a start and takes
    it out afterwards; a session cut in between left it there, and every later command of the task
    (the probe's own shells) carried the job's token."""
    class Shell:
        options = {"async_dir": "~/.ansible_async"}

        def get_option(self, name: str) -> Any:
            return self.options[name]

        def set_option(self, name: str, value: Any) -> None:
            self.options[name] = value

    class Action:
        _task = type("Task", (), {"async_val": 0, "environment": [{"LANG": "C"}]})()
        _connection = type("Connection", (), {"_shell": Shell()})()
        task_vars: dict[str, Any] = {}
        start_token = None

        def _execute_module(self, **kwargs: Any) -> dict[str, Any]:
            self._task.environment.append({"ANSIBLE_ASYNC_DIR": self._connection._shell.get_option("async_dir")})
            raise transport.SessionCut("the SSM session ended in the middle of a command")

    action = Action()
    follower = detached.Detached(action, time.time() + 60, 1.0, None, "run")
    with pytest.raises(transport.SessionCut):
        follower.start_once("s3_sync", {}, "89abcdef89abcdef", time.time() + 60)
    assert action._task.environment == [{"LANG": "C"}]
    assert action._connection._shell.get_option("async_dir") == "~/.ansible_async"


def test_a_torn_or_empty_poll_is_not_read_as_a_dead_job() -> None:
    # parse_poll alone still reads an empty output as "not alive": shell() never hands it one
    assert detached.parse_poll("") == (False, True, None, None)
    out = "alive\n%s\n{\"started\": true, \"finished\": false}\n%s\n{}\n" % (detached.SEPARATOR, detached.SEPARATOR)
    assert detached.parse_poll(out)[0] is True


def aws_ssm_wrapped(cmd: str) -> tuple[str, str, str]:
    """(wrapped command, mark_start, mark_end) as amazon.aws's aws_ssm writes it to the session."""
    class Connection:
        is_windows = False

        def verbosity_display(self, level: int, message: str) -> None:
            pass
    start, end = "A" * 26, "B" * 26
    return TerminalManager(Connection()).wrap_command(cmd, start, end), start, end


def test_the_stand_in_finds_the_commands_the_aws_ssm_plugin_writes_and_withholds_their_end() -> None:
    first, _, end = aws_ssm_wrapped("sudo sh -c 'python3 AnsiballZ_efs_mount.py'")
    second, _, _ = aws_ssm_wrapped("cat /run/reefguide-efs/jobs/x")
    buf = bytearray((first + second[:40]).encode())
    assert wrapped_commands(buf) == [("sudo sh -c 'python3 AnsiballZ_efs_mount.py'", end.encode())]
    buf += second[40:].encode()
    assert [c for c, _ in wrapped_commands(buf)] == ["cat /run/reefguide-efs/jobs/x"] and not buf
    cut = OutputCut(end.encode())
    out, done = cut.feed(b"{\"changed\": true}\n\n0\n" + end[:5].encode())
    assert not done and end[:5].encode() not in out
    rest, done = cut.feed(end[5:].encode() + b"\n")
    assert done and end.encode() not in out + rest and (out + rest).startswith(b"{\"changed\": true}")


def test_labd_cuts_the_nth_matching_command_once() -> None:
    cuts = SessionCuts()
    assert not cuts.armed()
    cuts.configure({"cuts": [{"match": "progress", "nth": 2}, {"match": "efs_mount", "nth": 1}]})
    assert cuts.armed()
    seen = [cuts.command_seen(c) for c in ("cat progress", "python3 AnsiballZ_efs_mount.py", "cat progress",
                                           "cat progress", "python3 AnsiballZ_efs_mount.py")]
    assert seen == [False, True, True, False, False]
    assert cuts.status()["fired"] == 2 and not cuts.armed()
    with pytest.raises(re.error):
        cuts.configure({"cuts": [{"match": "("}]})


class Probed(detached.Detached):
    """Detached with the instance's answers given: each shell command gets the next one."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__(action=None, deadline=1e12, poll_interval=1.0, progress_file=None, run_id="r1")
        self.answers, self.commands = answers, []

    def shell(self, cmd: str, what: str = "", then: str = "") -> dict[str, Any]:
        self.commands.append(cmd)
        return {"stdout": self.answers.pop(0) if self.answers else "", "rc": 0}


def test_a_start_without_answer_is_followed_if_it_runs_and_started_again_only_if_nothing_of_it_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detached, "CLAIM_GRACE", 0.0)
    monkeypatch.setattr(detached.time, "sleep", lambda s: None)
    job = "%s/j42.7" % detached.claim_dir("t1")
    running = '{"started": true, "finished": false}'
    wrapper = "running 4242 /usr/bin/python3 async_wrapper.py j1 3599\n"  # a process of the start
    assert Probed(["claimed\njob %s\n%s\n%s" % (job, running, wrapper)]).find_started("pull", "t1") == job
    assert Probed(["claimed\njob %s\n{\"rc\": 0}\n" % job]).find_started("pull", "t1") == job  # it ended
    killed = Probed(["claimed\njob %s\n%s\n" % (job, running)])  # started, no process left: start again
    assert killed.find_started("pull", "t1") is None and killed.commands[-1].startswith("rm -rf ")
    assert Probed([""]).find_started("pull", "t1") is None  # never reached the instance
    empty = Probed(["claimed\n"])  # async_wrapper died before its job began: the claim is taken back
    assert empty.find_started("pull", "t1") is None and empty.commands[-1].startswith("rm -rf ")
    monkeypatch.setattr(detached, "STUCK_START", 0.0)
    with pytest.raises(AnsibleActionFail, match="still runs on the instance .*pid 4242 /usr/bin/python3 "
                                                "async_wrapper.py j1 3599\\); not starting another"):
        Probed(["claimed\n" + wrapper] * 3).find_started("pull", "t1")

    starts: list[str] = []

    class CutThenStarted(Probed):
        def start_once(self, module: str, args: dict[str, Any], token: str, deadline: float) -> dict[str, Any]:
            starts.append(token)
            if len(starts) == 1:
                raise transport.SessionCut("the SSM session ended in the middle of a command")
            return {"ansible_job_id": "j9.1", "results_file": "%s/j9.1" % detached.claim_dir(token)}
    d = CutThenStarted(["", ""])  # the probe after the cut: nothing of it; then the record's write
    rec = d.start("pull", "s3_sync", {}, None)
    assert rec["jid"] == "j9.1" and len(starts) == 2 and starts[0] == starts[1] == rec["token"]
    class TmpDirSentTwice(CutThenStarted):  # ssm_retry sent the tmp directory's mkdir again: it exists
        def start_once(self, module: str, args: dict[str, Any], token: str, deadline: float) -> dict[str, Any]:
            if not starts:
                starts.append(token)
                raise AnsibleConnectionFailure("Failed to create temporary directory. ...")
            return super().start_once(module, args, token, deadline)
    starts.clear()
    assert TmpDirSentTwice(["", ""]).start("pull", "s3_sync", {}, None)["jid"] == "j9.1" and len(starts) == 2
    claimed = CutThenStarted(["claimed\njob %s\n%s\n%s" % (job, running, wrapper), ""])
    starts.clear()
    rec = claimed.start("pull", "s3_sync", {}, None)
    assert len(starts) == 1 and rec["jid"] == "j42.7" and rec["results_file"] == job  # followed, not resent


def test_the_release_has_a_limit_of_its_own_and_stays_known_as_running_when_it_cannot_be_followed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    budgets: list[float] = []

    alive = "alive\n%s\n%s\n%s\n\n" % (detached.SEPARATOR, '{"started": true, "finished": false}', detached.SEPARATOR)

    class Timed(Probed):
        def start_once(self, module: str, args: dict[str, Any], token: str, deadline: float) -> dict[str, Any]:
            budgets.append(deadline - time.time())
            return {"ansible_job_id": "j7.1", "results_file": "/run/reefguide-efs/jobs/%s/j7.1" % token}

        def shell(self, cmd: str, what: str = "", then: str = "") -> dict[str, Any]:
            self.commands.append(cmd)  # every poll: it still runs
            return {"stdout": alive if cmd.startswith(": reefguide-efs poll") else "", "rc": 0}

    d = Timed([])
    d.deadline = time.time() + 5  # the pull left 5 s of remote_timeout
    d.start("release", "efs_release", {}, None, time.time() + 3600)
    assert budgets[-1] > 3500  # async_wrapper's limit: the release's own, not the 5 s left
    monkeypatch.setattr(detached.time, "sleep", lambda s: None)
    with pytest.raises(AnsibleActionFail, match="release \\(efs_release\\) still running on the instance at its "
                                                "time limit"):
        d.run("release", "efs_release", {}, None, limit=0.05)
    assert d.running and d.running["step"] == "release"  # a failure now leaves it running: not to be stopped under
    assert d.commands[-1].startswith(": reefguide-efs poll release;")  # each poll names its step


SLOW_DAEMONISE = """import os, time
_setsid = os.setsid
def _slow():  # async_wrapper's daemonisation, once, slower than the 2.5 s its first process waits
    try:
        os.unlink(%r)
    except OSError:
        return _setsid()
    time.sleep(3)
    return _setsid()
os.setsid = _slow
"""

MODULE = """#!%s
import json, sys
sys.path.insert(0, %r)
import detached_job
detached_job.JOBS_DIR = %r
class Module:
    def fail_json(self, **kw):
        print(json.dumps(dict(kw, failed=True))); sys.exit(1)
detached_job.mark_began(Module())
with open(%r, "a") as f:
    f.write("ran\\n")
print(json.dumps({"changed": True, "msg": "done"}))
"""


class OnThisMachine(detached.Detached):
    """Detached with a real /bin/sh for the instance and ansible-core's real async_wrapper for its starts."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(action=None, deadline=time.time() + 120, poll_interval=0.5, progress_file=None, run_id="r1")
        self.tmp = tmp
        # a copy, as Ansible sends it: run where it lies, ansible/modules/tempfile.py would shadow the stdlib's
        self.wrapper = tmp / "async_wrapper.py"
        self.wrapper.write_bytes(Path(importlib.util.find_spec("ansible.modules.async_wrapper").origin).read_bytes())

    def shell(self, cmd: str, what: str = "", then: str = "") -> dict[str, Any]:
        return {"stdout": sh(cmd).stdout, "rc": 0}

    def start_once(self, module: str, args: dict[str, Any], token: str, deadline: float) -> dict[str, Any]:
        # as Ansible sends it: the job's directory in the environment, the interpreter, the wrapper, its limit
        cmd = "ANSIBLE_ASYNC_DIR=%s PYTHONPATH=%s %s %s j%d 3 %s _ -preserve_tmp" % (
            detached.claim_dir(token), self.tmp / "site", sys.executable, self.wrapper,
            int.from_bytes(token.encode()[:5], "big"), self.tmp / "module-tmp-x" / "module.py")
        return json.loads(sh(detached.guarded_start(cmd, token)).stdout)


def test_a_job_async_wrapper_loses_before_its_module_began_is_started_again_and_runs_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-core's async_wrapper returns "started" after waiting 2.5 s at most for its job; a job
    slower to daemonise (a busy instance) then dies before its module runs, its job file saying
    "started" forever. Nothing of it ran: it is started again, and its module runs once. A job whose
    module began and then died is not started again."""
    jobs, ran = tmp_path / "jobs", tmp_path / "ran"
    monkeypatch.setattr(detached, "JOBS_DIR", str(jobs))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_DAEMONISE % str(tmp_path / "slow-once"))
    (tmp_path / "module-tmp-x").mkdir()
    module = tmp_path / "module-tmp-x" / "module.py"
    module.write_text(MODULE % (sys.executable, str(ROOT / "module_utils" / "reefguide"), str(jobs), str(ran)))
    module.chmod(0o755)
    (tmp_path / "slow-once").touch()
    told: list[str] = []
    monkeypatch.setattr(detached, "tell", told.append)
    d = OnThisMachine(tmp_path)
    result = d.run("pull", "s3_sync", {})
    assert result.get("msg") == "done" and not result.get("failed"), result
    assert ran.read_text() == "ran\n"  # the module ran once, in the second job
    assert len(told) == 1 and re.match(r"pull: its job \(j\d+\.\d+\) ended before its module began: async_wrapper "
                                       r"lost it .*; nothing of it ran, starting it again \(2 of 4\)", told[0]), told
    assert [j["step"] for j in d.jobs] == ["pull", "pull"]
    assert not [p for p in jobs.iterdir()], list(jobs.iterdir())  # both jobs' records and directories are gone

    # a module that began and then died (killed mid-way) is not started again: the run fails saying so
    began_then_died = Probed([
        "", "", "%s\n%s\n%s\n\n" % ("", detached.SEPARATOR, detached.SEPARATOR)])
    began_then_died.start_once = lambda module, args, token, deadline: {  # type: ignore[method-assign]
        "ansible_job_id": "j5.1", "results_file": "%s/j5.1" % detached.claim_dir(token)}
    res = began_then_died.run("pull", "s3_sync", {})
    assert res["failed"] and "died on the instance without a result" in res["msg"] and len(began_then_died.jobs) == 1


# A shell's session whose child forked a daemon (setsid, no terminal) and is itself still running,
# as async_wrapper's intermediate process is for a moment; and a command that sudo's use_pty put in a
# session of its own on a pty. The session's end takes the second, never the daemon.
SESSION_TREE = r"""
import fcntl, os, pty, sys, termios, time
ready = sys.argv[1]
if os.fork() == 0:  # the daemon's parent, still alive in the shell's session
    if os.fork() == 0:
        os.setsid()
        open(ready + ".daemon", "w").write(str(os.getpid()))
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
    os._exit(0)
if os.fork() == 0:  # sudo's command: a session of its own, on a pty
    master, slave = pty.openpty()
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    open(ready + ".pty", "w").write(str(os.getpid()))
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def test_a_session_end_takes_what_runs_on_its_terminals_and_leaves_a_detached_daemon(tmp_path: Path) -> None:
    from reefguide_lab.session_end import session_processes

    ready = str(tmp_path / "ready")
    shell = subprocess.Popen([sys.executable, "-c", SESSION_TREE, ready], start_new_session=True)
    try:
        deadline = time.time() + 30
        while not (os.path.exists(ready + ".daemon") and os.path.exists(ready + ".pty")):
            assert time.time() < deadline and shell.poll() is None, "the process tree never got ready"
            time.sleep(0.05)
        time.sleep(0.2)  # both files are written before their pids' last step: sleep
        daemon, on_pty = int(Path(ready + ".daemon").read_text()), int(Path(ready + ".pty").read_text())
        taken = session_processes(shell.pid)
        assert shell.pid in taken and on_pty in taken
        assert daemon not in taken, taken
    finally:
        os.killpg(shell.pid, 9)
        for name in (".daemon", ".pty"):
            pid = Path(ready + name).read_text() if os.path.exists(ready + name) else ""
            if pid:
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass
        shell.wait()
