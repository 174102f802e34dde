"""Worker stand-ins: ReefGuide's worker tasks and their view of EFS, in the lab.

Upstream's workers are standalone Fargate tasks that the capacity manager starts with RunTask when
jobs wait (ecs_lab.py plays ECS and the capacity manager); each mounts its task definition's EFS
volume, whose root directory is /data/reefguide, takes jobs of its JOB_TYPES, and exits by itself
once idle for a while. An NFS mount holds that directory by its file handle, not by its path: rename
the directory away and the task stays on the old one; delete it and the task gets stale handles. A
stand-in does the same on the lab's EFS storage: in a private mount namespace it bind-mounts the
volume's root (held by inode from then on) with noatime, then looks continuously (the root still
there? cache/ present?), takes jobs from the queue (a job lasts the seconds it asks for, and a job
whose task is stopped stays IN_PROGRESS: lost, as upstream's is until its expiry), and, on request,
reads what a worker reads (config.toml, the data layers, the ADRIA data packages: every file below
its root but cache/), reporting in a status file a test can read.

    labctl workers start [--idle-exit S]    ECS, the capacity manager and the services' tasks (no worker yet)
    labctl workers job --type T [--seconds S] [--hold F] [--wait]   queue a job (a worker starts for it)
    labctl workers status                   services, worker tasks, each stand-in's status, the jobs
    labctl workers read                     ask the running workers to read everything now; what they read
    labctl workers stop                     stop them all (labctl down does too)
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from .state import (
    DEFAULT_STACK,
    LAB_PKG,
    LabError,
    lab_dir,
    pid_alive,
    read_json,
    require_up,
    save,
    spawn,
    stop_pid,
    write_json,
)

LOOK_SECONDS = 0.02  # how often a stand-in looks at its root and cache/
STATUS_SECONDS = 0.2  # how often it rewrites its status when nothing went wrong
IDLE_EXIT = 300.0  # a worker exits after this long with no job (ReefGuideWorker: 5 minutes)
MAX_SAMPLES = 20


def workers_dir(stack: str) -> Path:
    return lab_dir() / "workers" / stack


# -- the stand-in: one worker task -------------------------------------------------------------

class StandIn:
    """A worker task: its view of its mounted root, the jobs it takes, and the status it reports."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.mount = args.mount
        self.status_path, self.request_path, self.jobs = Path(args.status), Path(args.request), Path(args.jobs)
        self.job_types, self.idle_exit = args.job_types.split(","), float(args.idle_exit)
        self.job: Optional[dict[str, Any]] = None
        self.last_active = time.time()
        self.status: dict[str, Any] = {
            "task": args.task, "family": args.family, "pid": os.getpid(), "mount": args.mount,
            "started_at": time.time(), "root_ino": os.stat(self.mount).st_ino, "looks": 0,
            "cache_present_looks": 0, "cache_missing_looks": 0, "root_deleted_looks": 0,
            "errors": {}, "samples": [], "read": None, "job": None, "jobs_done": [], "exited": None,
            "held": None,
        }
        self.held_fd: Optional[int] = None

    def problem(self, what: str, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.status["errors"][name] = self.status["errors"].get(name, 0) + 1
        if len(self.status["samples"]) < MAX_SAMPLES:
            self.status["samples"].append({"at": time.time(), "what": what, "error": name, "message": str(exc)})

    def look(self) -> bool:
        """One look, as a worker's next request would: is its root still a live directory, is cache/
        there. True when something went wrong (so the status is written at once)."""
        self.status["looks"] += 1
        bad = False
        try:
            if os.stat(self.mount).st_nlink == 0:  # a deleted directory, still held by the mount
                self.status["root_deleted_looks"] += 1
                bad = True
        except OSError as exc:
            self.problem("stat root", exc)
            bad = True
        try:
            present = stat.S_ISDIR(os.stat(os.path.join(self.mount, "cache")).st_mode)
        except FileNotFoundError:
            present = False
        except OSError as exc:
            self.problem("stat cache/", exc)
            present = False
        self.status["cache_present_looks" if present else "cache_missing_looks"] += 1
        return bad or not present

    def read_all(self, nonce: str) -> None:
        """What a worker reads: every file below its root but cache/, by path, with its SHA-256."""
        files: dict[str, str] = {}
        errors: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.mount, onerror=lambda e: errors.append(describe(e))):
            rel_dir = os.path.relpath(dirpath, self.mount)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != "cache"]
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    files[os.path.relpath(path, self.mount)] = sha256_of(path)
                except OSError as exc:
                    errors.append(describe(exc))
                    self.problem("read " + os.path.relpath(path, self.mount), exc)
        packages_dir = os.path.join(self.mount, "adria", "datapackages")
        self.status["read"] = {
            "nonce": nonce, "at": time.time(), "files": files, "errors": errors,
            "digest": hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest(),
            "cache_present": os.path.isdir(os.path.join(self.mount, "cache")),
            "packages": sorted(os.listdir(packages_dir)) if os.path.isdir(packages_dir) else [],
        }

    def requested(self) -> Optional[str]:
        doc = read_json(self.request_path)
        if doc and (self.status["read"] or {}).get("nonce") != doc.get("nonce"):
            return doc.get("nonce")
        return None

    # jobs: the queue is jobs/<id>.json; a worker takes one with an exclusive claim file
    def take_job(self) -> None:
        for path in sorted(self.jobs.glob("*.json")):
            doc = read_json(path)
            if not doc or doc.get("status") != "PENDING" or doc.get("type") not in self.job_types:
                continue
            try:
                os.close(os.open(str(path.with_suffix(".claim")), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            doc.update(status="IN_PROGRESS", task=self.status["task"], started_at=time.time())
            write_json(path, doc)
            self.job, self.status["job"] = doc, doc["id"]
            if doc.get("hold"):  # a job that keeps one data file open while it runs, as a model run does
                self.held_fd = os.open(os.path.join(self.mount, doc["hold"]), os.O_RDONLY)
                self.status["held"] = {"path": doc["hold"], "ino": os.fstat(self.held_fd).st_ino, "deleted_looks": 0}
            return

    def look_at_held(self) -> bool:
        """The file a job holds open, deleted under it? On EFS another client's delete of a file this
        worker holds open gives it stale handles (ESTALE); the lab's local storage would let it read on."""
        if self.held_fd is None or os.fstat(self.held_fd).st_nlink > 0:
            return False
        self.status["held"]["deleted_looks"] += 1
        return True

    def work(self) -> None:
        if self.job is None:
            self.take_job()
        elif time.time() - self.job["started_at"] >= float(self.job.get("seconds", 0)):
            self.job.update(status="SUCCEEDED", ended_at=time.time())
            write_json(self.jobs / (self.job["id"] + ".json"), self.job)
            self.status["jobs_done"].append(self.job["id"])
            self.job = self.status["job"] = None
            if self.held_fd is not None:
                os.close(self.held_fd)
                self.held_fd = None
        if self.job is not None:
            self.last_active = time.time()

    def run(self) -> None:
        parent = os.getppid()
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        written = 0.0
        while not stopping and os.getppid() == parent:  # the supervisor gone: stop too
            urgent = self.look()
            self.work()
            urgent = self.look_at_held() or urgent
            nonce = self.requested()
            if nonce:
                self.read_all(nonce)
                urgent = True
            if self.job is None and time.time() - self.last_active >= self.idle_exit:
                self.status["exited"] = "idle"  # no job for idle_exit seconds: the worker ends itself
                break
            if urgent or time.time() - written >= STATUS_SECONDS:
                write_json(self.status_path, self.status)
                written = time.time()
            time.sleep(LOOK_SECONDS)
        # stopped with a job in hand: the job stays IN_PROGRESS, lost (upstream expires it hours later)
        self.status.update(stopped_at=time.time(), exited=self.status["exited"] or "stopped")
        write_json(self.status_path, self.status)


def describe(exc: OSError) -> str:
    return "%s: %s" % (errno.errorcode.get(exc.errno or 0, exc.errno), exc.filename)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cmd_standin(args: argparse.Namespace) -> None:
    """Runs in a mount namespace of its own (unshare --mount --propagation private): the bind
    mount holds args.source by inode, as the task's NFS mount holds its volume's root directory."""
    os.makedirs(args.mount, exist_ok=True)
    subprocess.run(["mount", "--bind", args.source, args.mount], check=True)
    subprocess.run(["mount", "-o", "remount,bind,noatime", args.mount], check=True)
    StandIn(args).run()


def cmd_supervise(args: argparse.Namespace) -> None:
    from .ecs_lab import Supervisor
    Supervisor(args.stack_name, workers_dir(args.stack_name), args.idle_exit).run()


# -- labctl workers ... -------------------------------------------------------------------------

def stack_of(args: argparse.Namespace, state: dict[str, Any]) -> str:
    return args.stack_name or state.get("stack_name", DEFAULT_STACK)


def report(stack: str) -> dict[str, Any]:
    """The supervisor's view (services, worker tasks), every worker stand-in's status, the jobs."""
    wdir = workers_dir(stack)
    sup = read_json(wdir / "supervisor.json") or {"services": {}, "workers": {}}
    standins = {arn: read_json(Path(rec["status_file"])) for arn, rec in sup["workers"].items()}
    jobs = {p.stem: read_json(p) for p in sorted(wdir.glob("jobs/*.json"))}
    return {"supervisor": sup, "standins": standins, "jobs": jobs}


def running_workers(doc: dict[str, Any]) -> list[str]:
    """The worker tasks whose stand-in runs and has reported."""
    return sorted(arn for arn, rec in doc["supervisor"]["workers"].items()
                  if rec["stopped_reason"] is None and (doc["standins"].get(arn) or {}).get("pid") == rec["pid"])


def cmd_start(args: argparse.Namespace) -> None:
    state = require_up()
    stack = stack_of(args, state)
    pids = state.setdefault("workers", {})
    if pid_alive(pids.get(stack)):
        print("ECS stand-ins of %s already running (supervisor pid %s)" % (stack, pids[stack]))
        return
    wdir = workers_dir(stack)
    wdir.mkdir(parents=True, exist_ok=True)
    (wdir / "supervisor.json").unlink(missing_ok=True)
    pids[stack] = spawn([sys.executable, "-m", "reefguide_lab.workers", "supervise", "--stack-name", stack,
                         "--idle-exit", str(args.idle_exit)],
                        "workers-%s.log" % stack, env=dict(os.environ, PYTHONPATH=str(LAB_PKG.parent)))
    save(state)
    deadline = time.time() + args.timeout
    while True:
        services = report(stack)["supervisor"]["services"]
        if services and all(rec.get("task") for rec in services.values()):
            break
        if not pid_alive(pids[stack]) or time.time() > deadline:
            raise LabError("the ECS stand-ins of %s did not start; see %s" % (stack, lab_dir() / "logs"))
        time.sleep(0.1)
    print("ECS stand-ins of %s up (supervisor pid %d): services %s; workers start when jobs wait "
          "('labctl workers job')" % (stack, pids[stack], ", ".join(sorted(services))))


def cmd_job(args: argparse.Namespace) -> None:
    state = require_up()
    stack = stack_of(args, state)
    if not pid_alive(state.get("workers", {}).get(stack)):
        raise LabError("the ECS stand-ins of %s are not running: 'labctl workers start' first" % stack)
    job = {"id": uuid.uuid4().hex[:12], "type": args.type, "seconds": args.seconds, "status": "PENDING",
           "submitted_at": time.time(), "hold": args.hold}
    jobs = workers_dir(stack) / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    write_json(jobs / (job["id"] + ".json"), job)
    deadline = time.time() + args.timeout
    while args.wait and (read_json(jobs / (job["id"] + ".json")) or {}).get("status") == "PENDING":
        if time.time() > deadline:
            raise LabError("no worker took job %s (%s) within %d s" % (job["id"], args.type, args.timeout))
        time.sleep(0.05)
    print(json.dumps(read_json(jobs / (job["id"] + ".json"))))


def stop_all(state: dict[str, Any]) -> list[int]:
    """Stop every stack's supervisor (it stops its stand-ins); the pids stopped. labctl down calls it."""
    stopped = []
    for pid in state.get("workers", {}).values():
        if pid_alive(pid):
            stop_pid(pid, timeout=15)
            stopped.append(pid)
    return stopped


def cmd_stop(args: argparse.Namespace) -> None:
    state = require_up()
    stack = stack_of(args, state)
    pid = state.get("workers", {}).get(stack)
    stopped = stop_all({"workers": {stack: pid}} if pid else {})
    state.get("workers", {}).pop(stack, None)
    save(state)
    print("ECS stand-ins of %s %s" % (stack, "stopped (supervisor pid %d)" % pid if stopped else "were not running"))


def cmd_status(args: argparse.Namespace) -> None:
    state = require_up()
    stack = stack_of(args, state)
    doc = report(stack)
    doc["running"] = pid_alive(state.get("workers", {}).get(stack))
    print(json.dumps(doc, indent=2, sort_keys=True))


def request_read(stack: str, tasks: list[str], timeout: float) -> dict[str, Any]:
    """Ask these workers to read everything; their answers, by task ARN."""
    nonce = uuid.uuid4().hex
    wdir = workers_dir(stack)
    files = {arn: wdir / (arn.rsplit("/", 1)[1] + ".json") for arn in tasks}
    for arn in tasks:
        write_json(wdir / (arn.rsplit("/", 1)[1] + ".request"), {"nonce": nonce})
    deadline = time.time() + timeout
    while True:
        answers = {arn: (read_json(path) or {}) for arn, path in files.items()}
        if all((a.get("read") or {}).get("nonce") == nonce for a in answers.values()):
            return {arn: dict(a["read"], family=a["family"], pid=a["pid"]) for arn, a in answers.items()}
        if time.time() > deadline:
            missing = [n for n, a in answers.items() if (a.get("read") or {}).get("nonce") != nonce]
            raise RuntimeError("no read from the worker(s) %s within %d s" % (", ".join(missing), timeout))
        time.sleep(0.05)


def cmd_read(args: argparse.Namespace) -> None:
    state = require_up()
    stack = stack_of(args, state)
    tasks = running_workers(report(stack))
    if not tasks or not pid_alive(state.get("workers", {}).get(stack)):
        raise LabError("no worker of %s is running: 'labctl workers job --type TEST' starts one" % stack)
    try:
        print(json.dumps(request_read(stack, tasks, args.timeout), indent=2, sort_keys=True))
    except RuntimeError as exc:
        raise LabError(str(exc)) from exc


def add_parser(sub: Any) -> None:
    """labctl's 'workers' subcommand (cli.py calls this)."""
    p = sub.add_parser("workers", help="ECS, the capacity manager and the worker tasks that mount EFS (ecs_lab.py)")
    actions = p.add_subparsers(dest="workers_command", required=True)
    for name, func in (("start", cmd_start), ("job", cmd_job), ("stop", cmd_stop), ("status", cmd_status),
                       ("read", cmd_read)):
        q = actions.add_parser(name)
        q.add_argument("--stack-name")
        q.add_argument("--timeout", type=float, default=30.0)
        if name == "start":
            q.add_argument("--idle-exit", type=float, default=IDLE_EXIT,
                           help="seconds a worker waits with no job before it exits (default %(default)s)")
        if name == "job":
            q.add_argument("--type", required=True, help="a job type, e.g. TEST or ADRIA_MODEL_RUN")
            q.add_argument("--seconds", type=float, default=0.0, help="how long the job keeps its worker busy")
            q.add_argument("--wait", action="store_true", help="until a worker has taken it")
            q.add_argument("--hold", help="a file below the workers' root the job keeps open while it runs")
        q.set_defaults(func=func)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="reefguide_lab.workers")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("supervise")
    p.add_argument("--stack-name", default=DEFAULT_STACK)
    p.add_argument("--idle-exit", type=float, default=IDLE_EXIT)
    p.set_defaults(func=cmd_supervise)
    p = sub.add_parser("standin")
    for opt in ("--task", "--family", "--job-types", "--source", "--mount", "--status", "--request", "--jobs",
                "--idle-exit"):
        p.add_argument(opt, required=True)
    p.set_defaults(func=cmd_standin)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
