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

from __future__ import annotations

import json
import os
import shlex
import time
from typing import Any, Callable, Optional

from ansible.errors import AnsibleActionFail
from ansible.utils.display import Display

display = Display()

JOBS_DIR = "/run/reefguide-efs/jobs"
SEPARATOR = "--reefguide-efs-job--"
FIRST_POLL = 0.25  # seconds; doubled after each poll up to the poll interval


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


def parse_poll(stdout: str) -> tuple[bool, Optional[dict[str, Any]], Optional[dict[str, Any]]]:
    """(alive, job file, progress file) from a poll's output; None for what is missing or torn."""
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
    return parts[0].strip() == "alive", docs[0], docs[1]


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

    def shell(self, cmd: str) -> dict[str, Any]:
        return self.action._low_level_execute_command("/bin/sh -c %s" % shlex.quote(cmd), sudoable=True)

    # -- start ------------------------------------------------------------------
    def start(self, name: str, module: str, args: dict[str, Any], progress: Optional[str]) -> dict[str, Any]:
        """Start module detached; the job's record, or the failed start's result (key "failed")."""
        task = self.action._task
        saved = task.async_val
        task.async_val = max(1, int(self.deadline - time.time()))  # async_wrapper kills it past the budget
        try:
            started = self.action._execute_module(module_name=module, module_args=args,
                                                  task_vars=self.action.task_vars, wrap_async=True)
        finally:
            task.async_val = saved
        if started.get("failed") or not started.get("ansible_job_id"):
            return started
        job = {"jid": started["ansible_job_id"], "results_file": started["results_file"], "step": name,
               "module": module, "run_id": self.run_id, "progress_file": progress,
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.shell("printf '%%s' %s > %s" % (shlex.quote(json.dumps(job)), shlex.quote(self.record_path(job))))
        self.jobs.append({k: job[k] for k in ("jid", "step", "module")})
        return job

    @staticmethod
    def record_path(job: dict[str, Any]) -> str:
        return "%s/%s.json" % (JOBS_DIR, job["jid"])

    # -- follow -----------------------------------------------------------------
    def poll(self, job: dict[str, Any]) -> tuple[bool, Optional[dict[str, Any]], Optional[dict[str, Any]]]:
        # liveness first: a job file read after it is a result written before the process ended;
        # the final echo: the aws_ssm plugin drops the last line of a command's output unless it ends one
        cmd = "if %s; then echo alive; fi; echo %s; cat %s 2>/dev/null; echo; echo %s; %s; echo" % (
            alive_test(job["jid"]), SEPARATOR, shlex.quote(job["results_file"]), SEPARATOR,
            "cat %s 2>/dev/null" % shlex.quote(job["progress_file"]) if job.get("progress_file") else "true")
        self.polls += 1
        res = self.shell(cmd)
        return parse_poll(res.get("stdout", ""))

    def follow(self, job: dict[str, Any], show: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Poll until the job ends: its module result (or a failure saying why there is none)."""
        wait, shown = FIRST_POLL, 0.0
        while True:
            alive, job_file, progress = self.poll(job)
            if progress is not None and time.time() - shown >= self.poll_interval:
                show(progress)
                shown = time.time()
            if finished(job_file):
                self.forget(job)
                return as_result(job_file or {})
            if not alive:
                self.forget(job)
                return {"failed": True, "msg": "it died on the instance without a result (job %s; killed, "
                                               "or the instance stopped)" % job["jid"]}
            if time.time() >= self.deadline:
                raise AnsibleActionFail(
                    "%s (%s) still running on the instance after reefguide_remote_timeout (job %s, its record "
                    "%s): the next run waits for it" % (job["step"], job["module"], job["jid"], self.record_path(job)))
            time.sleep(min(wait, max(0.0, self.deadline - time.time())))
            wait = min(wait * 2, self.poll_interval)

    def forget(self, job: dict[str, Any]) -> None:
        """The job's record, its progress file and async_wrapper's result file (read by now) go."""
        paths = [self.record_path(job)] + [job[k] for k in ("progress_file", "results_file") if job.get(k)]
        self.shell("rm -f %s" % " ".join(shlex.quote(p) for p in paths))

    def run(self, name: str, module: str, args: dict[str, Any], progress: Optional[str] = None) -> dict[str, Any]:
        job = self.start(name, module, args, progress)
        if "jid" not in job:
            return job
        return self.follow(job, lambda p: self.show_progress(name, p))

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
                         "true" % (JOBS_DIR, JOBS_DIR))
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
            alive, job_file, _ = self.poll(job)
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
