# reefguide-efs: the long steps of the remote part, run detached on the instance.
#
# Session Manager ends a session that has had no input from the client for its idle
# timeout (20 min by default, 60 at most) and kills what the session's shell runs; the
# aws_ssm plugin sends nothing while a command runs. So a long step is started with
# Ansible's async machinery (async_wrapper daemonises it: setsid and a double fork, out of
# the session) and followed with short commands: `cat` of its job file and of its progress
# file, no module transfer per poll. Each poll is client input, which keeps the session alive.
#
# A job record per detached step (/run/reefguide-efs/jobs/<jid>.json; /run is a tmpfs, so
# a stop of the instance, which kills the jobs, forgets them too) lets the next run find a
# step that a lost controller or session left running: it waits for it instead of starting
# a second one on the same files.
#
# A session can end in the middle of any of these calls (transport.py): a poll's torn output
# is asked again, never read as "the job died"; and a start is idempotent: a token made on the
# controller names the job's own directory (async_wrapper's ANSIBLE_ASYNC_DIR, so it is in the
# start's command line and the job's environment, and the job file lands in it). The start
# claims that directory (mkdir) before async_wrapper runs, so the same start sent again (by us,
# or by aws_ssm's ssm_retry after a call timeout) finds the claim and follows the job that
# holds it instead of starting another.

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from typing import Any, Callable, Optional

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.utils.display import Display

from .transport import ask_again, before_end_marker, end_marker, tell, with_end_marker

display = Display()

SEPARATOR = "--reefguide-efs-job--"
FIRST_POLL = 0.25  # seconds; doubled after each poll up to the poll interval
# the same as module_utils/reefguide/detached_job.py (an action plugin cannot import module_utils)
JOBS_DIR = "/run/reefguide-efs/jobs"
BEGAN = "began"  # a job's module leaves it in the job's directory before any work
NEVER_BEGAN = "reefguide_efs_never_began"  # a followed job's result: its module never ran (started again)
CLAIMED = "reefguide_efs_claimed"  # a start that found its token's directory taken answers this key
START_ATTEMPTS = 4
CLAIM_GRACE = 3.0  # seconds a claim may stay without a job file while async_wrapper forks
STUCK_START = 30.0  # seconds more while a process of the start still runs (async_wrapper waits 2.5 s at most)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return "%d B" % n


def progress_line(name: str, p: dict[str, Any]) -> str:
    return "%s: %s, %s/%s files, %s/%s (%s%%)" % (
        name, p.get("phase", "?"), p.get("files_done", 0), p.get("files_total", 0),
        human(p.get("bytes_done", 0)), human(p.get("bytes_total", 0)), p.get("percent", 0))


def alive_test(jid: str) -> str:
    """A shell test true while a process of the job runs: async_wrapper's processes carry the
    job id as an argument ([j]: the pattern does not match grep's own command line)."""
    base = jid.split(".", 1)[0]
    return "grep -qsxz %s /proc/[0-9]*/cmdline" % shlex.quote("[%s]%s" % (base[0], base[1:]))


def parse_poll(stdout: str) -> tuple[bool, bool, Optional[dict[str, Any]], Optional[dict[str, Any]]]:
    """(alive, began, job file, progress file) from a poll's output; None for what is missing or torn."""
    parts = (stdout or "").split(SEPARATOR)
    docs: list[Optional[dict[str, Any]]] = []
    for text in (parts[1:3] if len(parts) >= 3 else []):
        try:
            doc = json.loads(text.strip())
            docs.append(doc if isinstance(doc, dict) else None)
        except ValueError:
            docs.append(None)
    while len(docs) < 2:
        docs.append(None)
    said = parts[0].split()
    return "alive" in said, "not-begun" not in said, docs[0], docs[1]


def claim_dir(token: str) -> str:
    return "%s/%s" % (JOBS_DIR, token)


def guarded_start(cmd: str, token: str) -> str:
    """The start's command, run only by the first to claim the token's directory; a start sent
    again prints {CLAIMED: token} instead of starting a second job."""
    claim = shlex.quote(claim_dir(token))
    answer = shlex.quote(json.dumps({CLAIMED: token}))
    return "mkdir -p -m 0700 %s && if mkdir -m 0700 %s 2>/dev/null; then %s; else printf '%%s\\n' %s; fi" % (
        JOBS_DIR, claim, cmd, answer)


def started_probe(token: str) -> str:
    """A shell command saying what became of a start: 'running PID COMMAND' for each process of the
    start (async_wrapper's and the module's, which carry the token in their environment), then
    'claimed' (its directory exists) and 'job PATH' with the next line its content (async_wrapper's
    job file). The processes come first: a job that ends between the two looks is then read
    finished, never "started, and nothing of it runs" (a killed start, which is started again; seen
    once in a loaded run). Only those processes count: a probe's shells that carry the token (they
    did when a cut start left it in the task's environment) would wait for themselves."""
    claim = shlex.quote(claim_dir(token))
    return ("for e in $(grep -lsz %s /proc/[0-9]*/environ); do p=${e%%/environ}; "
            "c=$(tr '\\000' ' ' < $p/cmdline 2>/dev/null | cut -c1-160); "
            "case $c in *async_wrapper.py*|*AnsiballZ_*) echo \"running ${p#/proc/} $c\";; esac; done; "
            "if [ -d %s ]; then echo claimed; for f in %s/j*; do case $f in *.tmp) ;; *) [ -f \"$f\" ] && "
            "echo \"job $f\" && cat \"$f\" && echo;; esac; done; fi; true"
            % (shlex.quote("ANSIBLE_ASYNC_DIR=" + claim_dir(token)), claim, claim))


def parse_started(stdout: str) -> tuple[bool, Optional[str], Optional[dict[str, Any]], list[str]]:
    """(claimed, job file path or None, its content or None, the processes of the start that still
    run, each 'PID COMMAND') from started_probe's output."""
    lines = [ln.strip() for ln in (stdout or "").splitlines()]
    path, doc = None, None
    for i, ln in enumerate(lines):
        if ln.startswith("job /") and path is None:
            path = ln[4:]
            try:
                doc = json.loads(lines[i + 1]) if i + 1 < len(lines) else None
            except ValueError:
                doc = None
    running = [ln[len("running "):] for ln in lines if ln.startswith("running ")]
    return "claimed" in lines, path, doc if isinstance(doc, dict) else None, running


def finished(job_file: Optional[dict[str, Any]]) -> bool:
    """async_wrapper writes {"started": true, "finished": false} first, then the module's result."""
    return job_file is not None and not (job_file.get("started") and not job_file.get("finished"))


def as_result(job_file: dict[str, Any]) -> dict[str, Any]:
    """The module's result as _execute_module would give it."""
    res = dict(job_file)
    if res.get("failed") and "data" in res and "cmd" in res:
        # the module printed no JSON: async_wrapper's own traceback says only that
        res["module_stdout"], res["module_stderr"] = res.pop("data") or "", res.get("stderr") or ""
        res["msg"] = "module error: %s" % ((res["module_stderr"] or res["module_stdout"]).strip()[-2000:]
                                           or "no output")
    return res


class Detached:
    """Starts steps detached on the instance and follows them until they end."""

    def __init__(self, action: Any, deadline: float, poll_interval: float, progress_file: Optional[str],
                 run_id: str) -> None:
        self.action, self.deadline = action, deadline
        self.poll_interval = max(FIRST_POLL, poll_interval)
        self.progress_file, self.run_id = progress_file, run_id
        self.polls = 0
        self.jobs: list[dict[str, Any]] = []
        self.running: Optional[dict[str, Any]] = None  # the job being followed

    def shell(self, cmd: str, what: str = "a command on the instance",
              then: str = "nothing was concluded from it") -> dict[str, Any]:
        """cmd (idempotent: it may run twice) to its end: asked again in a new session when the
        session ends under it; its stdout without the end marker."""
        def once() -> Optional[dict[str, Any]]:
            marker = end_marker()
            res = self.action._low_level_execute_command(
                "/bin/sh -c %s" % shlex.quote(with_end_marker(cmd, marker)), sudoable=True)
            out = before_end_marker(res.get("stdout"), marker)
            return None if out is None else dict(res, stdout=out)
        return ask_again(what, once, then=then)

    # -- start ------------------------------------------------------------------
    def start(self, name: str, module: str, args: dict[str, Any], progress: Optional[str],
              deadline: Optional[float] = None, marks_began: bool = True) -> dict[str, Any]:
        """Start module detached, once; the job's record, or the failed start's result (key "failed").
        deadline: when async_wrapper kills it (default the remote part's). marks_began: the module
        leaves BEGAN (ours do; Ansible's own, e.g. command, do not: their jobs are taken as begun)."""
        token = secrets.token_hex(8)
        for _ in range(START_ATTEMPTS):
            try:
                started: Optional[dict[str, Any]] = self.start_once(module, args, token, deadline or self.deadline)
            except AnsibleConnectionFailure as exc:
                # a cut (SessionCut), or what follows one: aws_ssm's ssm_retry sends a command again
                # after its read of the ended session fails, and the tmp directory's mkdir sent twice fails
                tell("%s: %s while it was being started; looking on the instance for its job"
                     % (name, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))
                started = None
            if started is not None and started.get("ansible_job_id"):
                jid, results_file = started["ansible_job_id"], started["results_file"]
            elif started is not None and not started.get(CLAIMED):
                return started  # the module's own failure (e.g. a transfer that did not arrive)
            else:  # cut, or sent twice: the token's directory says whether a job runs
                found = self.find_started(name, token)
                if found is None:
                    continue  # nothing of it runs: start it again
                jid, results_file = os.path.basename(found), found
            return self.record(name, module, progress, token, jid, results_file, marks_began)
        raise AnsibleActionFail("%s (%s) could not be started: the SSM session ended under its start %d times "
                                "running; no job of it runs on the instance" % (name, module, START_ATTEMPTS))

    def start_once(self, module: str, args: dict[str, Any], token: str, deadline: float) -> dict[str, Any]:
        task, shell = self.action._task, self.action._connection._shell
        saved = task.async_val, shell.get_option("async_dir")
        # _execute_module adds ANSIBLE_ASYNC_DIR to the task's environment and takes it out after
        # the start: a cut in between leaves it there, on every later command of the task
        environment = len(task.environment or [])
        task.async_val = max(1, int(deadline - time.time()))  # async_wrapper kills it past its budget
        shell.set_option("async_dir", claim_dir(token))  # the job file lands in the token's directory
        self.action.start_token = token  # efs_session guards the start's command with it
        try:
            return self.action._execute_module(module_name=module, module_args=args,
                                               task_vars=self.action.task_vars, wrap_async=True)
        finally:
            task.async_val = saved[0]
            shell.set_option("async_dir", saved[1])
            if task.environment:
                del task.environment[environment:]
            self.action.start_token = None
            shell.tmpdir = None  # the job's (async_wrapper removes it), even when the start was cut

    def find_started(self, name: str, token: str) -> Optional[str]:
        """The job file of the start with this token, or None when nothing of it runs (then its
        claim is taken back, so it can be started again)."""
        give_up = time.time() + CLAIM_GRACE
        while True:
            res = self.shell(started_probe(token), "%s: looking for its job" % name,
                             then="whether it started is unknown; the next run waits for it if it did")
            claimed, job_file, job, running = parse_started(res["stdout"])
            if job_file and (running or finished(job)):
                tell("%s: its job runs (%s); following it, not starting another" % (name, job_file))
                return job_file
            if job_file:  # started, and no process of it left: killed with the session during its start
                tell("%s: its job (%s) was killed with the session that started it, nothing of it runs; "
                     "starting it again" % (name, job_file))
                self.shell("rm -rf %s" % shlex.quote(claim_dir(token)), "%s: taking back its claim" % name)
                return None
            if not claimed and not running:
                return None
            if not running and time.time() >= give_up:
                self.shell("rm -rf %s" % shlex.quote(claim_dir(token)), "%s: taking back its claim" % name)
                return None
            if time.time() >= give_up + STUCK_START:
                raise AnsibleActionFail(
                    "%s: a process of its start (token %s) still runs on the instance %d s later without a job "
                    "file in %s (%s); not starting another: stop that process (or the instance) and run again"
                    % (name, token, CLAIM_GRACE + STUCK_START, claim_dir(token),
                       "; ".join("pid %s" % proc for proc in running)))
            time.sleep(0.25)  # async_wrapper is between its fork and its job file

    def record(self, name: str, module: str, progress: Optional[str], token: str, jid: str,
               results_file: str, marks_began: bool = True) -> dict[str, Any]:
        job = {"jid": jid, "results_file": results_file, "step": name, "module": module, "run_id": self.run_id,
               "progress_file": progress, "token": token, "marks_began": marks_began,
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.shell("printf '%%s' %s > %s" % (shlex.quote(json.dumps(job)), shlex.quote(self.record_path(job))),
                   "%s: writing its job record" % name)
        self.jobs.append({k: job[k] for k in ("jid", "step", "module")})
        return job

    @staticmethod
    def record_path(job: dict[str, Any]) -> str:
        return "%s/%s.json" % (JOBS_DIR, job["jid"])

    # -- follow -----------------------------------------------------------------
    def poll(self, job: dict[str, Any]) -> tuple[bool, bool, Optional[dict[str, Any]], Optional[dict[str, Any]]]:
        # liveness first: a job file read after it is a result written before the process ended;
        # the final echo: the aws_ssm plugin drops the last line of a command's output unless it ends one
        # the ':' names the step polled: a no-op that the logs (and the lab's session cuts) can match
        # then whether its module began (a job of an earlier version, without a token, or of a module
        # that does not mark, is taken as begun)
        began = ("[ -e %s ] || echo not-begun; " % shlex.quote("%s/%s" % (claim_dir(job["token"]), BEGAN))
                 if job.get("token") and job.get("marks_began", True) else "")
        cmd = (": reefguide-efs poll %s; if %s; then echo alive; fi; %secho %s; cat %s 2>/dev/null; echo; echo %s; "
               "%s; echo") % (
            shlex.quote(str(job.get("step"))), alive_test(job["jid"]), began, SEPARATOR,
            shlex.quote(job["results_file"]), SEPARATOR,
            "cat %s 2>/dev/null" % shlex.quote(job["progress_file"]) if job.get("progress_file") else "true")
        self.polls += 1
        res = self.shell(cmd, "%s (%s): a poll of job %s" % (job.get("step"), job.get("module"), job["jid"]),
                         then="the job goes on on the instance and keeps its record %s: the next run waits "
                              "for it" % self.record_path(job))
        return parse_poll(res.get("stdout", ""))

    def follow(self, job: dict[str, Any], show: Callable[[dict[str, Any]], None],
               deadline: Optional[float] = None) -> dict[str, Any]:
        """Poll until the job ends: its module result (or a failure saying why there is none)."""
        wait, shown, deadline = FIRST_POLL, 0.0, deadline or self.deadline
        while True:
            alive, began, job_file, progress = self.poll(job)
            if progress is not None and time.time() - shown >= self.poll_interval:
                show(progress)
                shown = time.time()
            if finished(job_file):
                self.forget(job)
                return as_result(job_file or {})
            if not alive and not began:
                self.forget(job)
                return {"failed": True, NEVER_BEGAN: True, "msg": "its job (%s) ended before its module began: "
                        "async_wrapper lost it while it daemonised (a busy instance)" % job["jid"]}
            if not alive:
                self.forget(job)
                return {"failed": True, "msg": "it died on the instance without a result (job %s; killed, "
                                               "or the instance stopped)" % job["jid"]}
            if time.time() >= deadline:
                raise AnsibleActionFail(
                    "%s (%s) still running on the instance at its time limit (job %s, its record %s): the next "
                    "run waits for it" % (job["step"], job["module"], job["jid"], self.record_path(job)))
            time.sleep(min(wait, max(0.0, deadline - time.time())))
            wait = min(wait * 2, self.poll_interval)

    def forget(self, job: dict[str, Any]) -> None:
        """The job's record, its progress file and async_wrapper's result file (read by now) go."""
        paths = [self.record_path(job)] + [job[k] for k in ("progress_file", "results_file") if job.get(k)]
        cmd = "rm -f %s" % " ".join(shlex.quote(p) for p in paths)
        if job.get("token"):
            cmd += "; rm -rf %s" % shlex.quote(claim_dir(job["token"]))  # the job's own directory
        self.shell(cmd, "%s: removing its job record" % job.get("step"))

    def run(self, name: str, module: str, args: dict[str, Any], progress: Optional[str] = None,
            limit: Optional[float] = None, marks_began: bool = True) -> dict[str, Any]:
        """Start and follow one step. limit: its own time budget in seconds (the release's), instead of
        what is left of the remote part's. While it is followed, self.running is its job: a failure
        then leaves it running, or at least unknown, on the instance."""
        deadline = time.time() + limit if limit else None
        for attempt in range(1, START_ATTEMPTS + 1):
            job = self.start(name, module, args, progress, deadline, marks_began)
            if "jid" not in job:
                return job
            self.running = job
            result = self.follow(job, lambda p: self.show_progress(name, p), deadline)
            self.running = None
            if not result.get(NEVER_BEGAN) or attempt == START_ATTEMPTS:
                return result
            tell("%s: %s; nothing of it ran, starting it again (%d of %d)" % (name, result["msg"], attempt + 1,
                                                                             START_ATTEMPTS))
        return result

    def show_progress(self, name: str, progress: dict[str, Any]) -> None:
        """On the controller: a line in the task's output and the progress file (as the upload's)."""
        display.display("  %s" % progress_line(name, progress))
        if not self.progress_file:
            return
        tmp = "%s.%d.tmp" % (self.progress_file, os.getpid())
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(dict(progress, step=name), fh)
            os.replace(tmp, self.progress_file)
        except OSError:
            pass  # progress is best effort

    # -- what earlier runs left -------------------------------------------------
    def earlier_jobs(self) -> list[dict[str, Any]]:
        res = self.shell("mkdir -p -m 0700 %s; for f in %s/*.json; do [ -f \"$f\" ] && cat \"$f\" && echo; done; "
                         "true" % (JOBS_DIR, JOBS_DIR), "reading the job records of earlier runs")
        jobs = []
        for line in (res.get("stdout") or "").splitlines():
            try:
                job = json.loads(line)
            except ValueError:
                continue
            if isinstance(job, dict) and job.get("jid") and job.get("results_file"):
                jobs.append(job)
        return jobs

    def wait_for_earlier(self) -> list[dict[str, Any]]:
        """Wait for every step an earlier run left running (a lost controller or session), so that
        nothing is started twice on the same files. Returns the jobs waited for."""
        waited = []
        for job in self.earlier_jobs():
            alive, _, job_file, _ = self.poll(job)
            if finished(job_file) or not alive:
                self.forget(job)  # it ended (or died) while no run was watching
                continue
            message = ("%s (%s) of run %s, started %s, is still running on the instance (job %s): waiting "
                       "for it to end before this run's remote work"
                       % (job.get("step"), job.get("module"), job.get("run_id"), job.get("started"), job["jid"]))
            # shown now (a worker's warnings are printed only when its task ends), and kept as a warning
            display.display("  %s" % message)
            display.warning(message)
            res = self.follow(job, lambda p, j=job: self.show_progress("%s of run %s" % (j.get("step"),
                                                                                        j.get("run_id")), p))
            waited.append({"jid": job["jid"], "step": job.get("step"), "run_id": job.get("run_id"),
                           "failed": bool(res.get("failed"))})
        return waited
