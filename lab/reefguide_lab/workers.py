"""Worker stand-ins: the ReefGuide workers' view of EFS, in the lab.

On AWS each worker task (the stack's AWS::ECS::Service resources) mounts EFS through an access
point whose root is /data/reefguide. An NFS mount holds that directory by its file handle, not by
its path: rename the directory away and the task stays on the old one; delete it and the task gets
stale handles. A stand-in does the same on the lab's EFS storage: in a private mount namespace it
bind-mounts the access point's root directory (held by inode from then on) with noatime, then
looks continuously (the root still there? cache/ present?) and, on request, reads what a worker
reads (config.toml, the data layers, the ADRIA data packages under adria/datapackages/<name>: every
file below its root but cache/), reporting what it saw in a status file a test can read.

One supervisor per stack runs one stand-in per worker service and follows ECS: a new deployment of
a service (UpdateService forceNewDeployment) restarts that service's stand-in, which mounts again
and so holds the directory that is there now.

    labctl workers start [--stack-name N]    the supervisor and its stand-ins (waits until each has mounted)
    labctl workers status [--stack-name N]   the supervisor's services and every stand-in's status
    labctl workers read [--service S]        ask the stand-ins to read everything now; print what they read
    labctl workers stop [--stack-name N]     stop them (labctl down does too)
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

from .state import DEFAULT_STACK, LAB_PKG, lab_dir, load, pid_alive, save, stop_pid

LOOK_SECONDS = 0.02  # how often a stand-in looks at its root and cache/
STATUS_SECONDS = 0.2  # how often it rewrites its status when nothing went wrong
POLL_SECONDS = 0.3  # how often the supervisor asks ECS for each service's deployment
MAX_SAMPLES = 20


def workers_dir(stack: str) -> Path:
    return lab_dir() / "workers" / stack


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


# -- the stand-in: one worker task's mount ------------------------------------------------------

class StandIn:
    """A worker task's view of its mounted root, and the status it reports."""

    def __init__(self, service: str, deployment: str, mount: str, status: Path, request: Path) -> None:
        self.mount = mount
        self.status_path = status
        self.request_path = request
        self.status: dict[str, Any] = {
            "service": service, "deployment": deployment, "pid": os.getpid(), "mount": mount,
            "started_at": time.time(), "root_ino": os.stat(mount).st_ino, "looks": 0,
            "cache_present_looks": 0, "cache_missing_looks": 0, "root_deleted_looks": 0,
            "errors": {}, "samples": [], "read": None,
        }

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

    def run(self) -> None:
        parent = os.getppid()
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        written = 0.0
        while not stopping and os.getppid() == parent:  # the supervisor gone: stop too
            urgent = self.look()
            nonce = self.requested()
            if nonce:
                self.read_all(nonce)
                urgent = True
            if urgent or time.time() - written >= STATUS_SECONDS:
                write_json(self.status_path, self.status)
                written = time.time()
            time.sleep(LOOK_SECONDS)
        write_json(self.status_path, dict(self.status, stopped_at=time.time()))


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
    mount holds args.source by inode, as an NFS mount of an access point holds its root."""
    os.makedirs(args.mount, exist_ok=True)
    subprocess.run(["mount", "--bind", args.source, args.mount], check=True)
    subprocess.run(["mount", "-o", "remount,bind,noatime", args.mount], check=True)
    StandIn(args.service, args.deployment, args.mount, Path(args.status), Path(args.request)).run()


# -- the supervisor: one stand-in per worker service, restarted on a new deployment -------------

def discover(state: dict[str, Any], stack: str) -> dict[str, Any]:
    """The stack's worker services (cluster, name) and the access point's root on the lab's EFS."""
    from .cli import client  # cli imports this module for its subcommands
    from .instance import efs_storage
    info = state["stacks"][stack]
    resources = client(state, "cloudformation").describe_stack_resources(StackName=stack)["StackResources"]
    services = []
    for res in resources:
        if res["ResourceType"] == "AWS::ECS::Service":
            # arn:aws:ecs:<region>:<account>:service/<cluster>/<name>
            cluster, name = res["PhysicalResourceId"].split(":service/", 1)[1].split("/", 1)
            services.append({"cluster": cluster, "service": name})
    points = client(state, "efs").describe_access_points(FileSystemId=info["fs_id"])["AccessPoints"]
    roots = [p["RootDirectory"]["Path"] for p in points if p.get("RootDirectory", {}).get("Path")]
    if not services or not roots:
        raise RuntimeError("stack %s has no worker services or no EFS access point" % stack)
    source = efs_storage() / info["fs_id"] / roots[0].strip("/")
    return {"services": sorted(services, key=lambda s: s["service"]), "root": roots[0], "source": str(source)}


def primary_deployment(ecs: Any, cluster: str, service: str) -> str:
    found = ecs.describe_services(cluster=cluster, services=[service])["services"][0]["deployments"]
    return next(d["id"] for d in found if d["status"] == "PRIMARY")


class Supervisor:
    def __init__(self, stack: str) -> None:
        from .cli import client
        self.state = load()
        self.stack = stack
        self.dir = workers_dir(stack)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.found = discover(self.state, stack)
        self.ecs = client(self.state, "ecs")
        self.running: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, svc: dict[str, str], deployment: str) -> None:
        name = svc["service"]
        old = self.procs.pop(name, None)
        if old is not None:
            stop_process(old)
        status = self.dir / (name + ".json")
        argv = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m", "reefguide_lab.workers",
                "standin", "--service", name, "--deployment", deployment, "--source", self.found["source"],
                "--mount", str(self.dir / "mnt" / name), "--status", str(status),
                "--request", str(self.dir / (name + ".request"))]
        with open(self.dir / (name + ".log"), "ab") as log:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                env=dict(os.environ, PYTHONPATH=str(LAB_PKG.parent)))
        rec = self.running.setdefault(name, {"starts": 0, "cluster": svc["cluster"]})
        rec.update(deployment=deployment, pid=self.procs[name].pid, started_at=time.time(), starts=rec["starts"] + 1)

    def run(self) -> None:
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        while not stopping:
            for svc in self.found["services"]:
                deployment = primary_deployment(self.ecs, svc["cluster"], svc["service"])
                proc = self.procs.get(svc["service"])
                current = self.running.get(svc["service"], {}).get("deployment")
                if proc is None or proc.poll() is not None or current != deployment:
                    self.start(svc, deployment)
            write_json(self.dir / "supervisor.json", {"pid": os.getpid(), "stack": self.stack, "services": self.running,
                                                      "root": self.found["root"], "source": self.found["source"]})
            time.sleep(POLL_SECONDS)
        for proc in self.procs.values():
            stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cmd_supervise(args: argparse.Namespace) -> None:
    Supervisor(args.stack_name).run()


# -- labctl workers ... -------------------------------------------------------------------------

def stack_of(args: argparse.Namespace, state: dict[str, Any]) -> str:
    return args.stack_name or state.get("stack_name", DEFAULT_STACK)


def report(stack: str) -> dict[str, Any]:
    """The supervisor's view and every stand-in's status."""
    sup = read_json(workers_dir(stack) / "supervisor.json") or {"services": {}}
    standins = {name: read_json(workers_dir(stack) / (name + ".json")) for name in sup["services"]}
    return {"supervisor": sup, "standins": standins}


def ready(stack: str) -> bool:
    """Every service's stand-in has mounted and reported, for the deployment ECS has now."""
    doc = report(stack)
    services = doc["supervisor"]["services"]
    return bool(services) and all(
        (doc["standins"].get(name) or {}).get("deployment") == rec["deployment"]
        and (doc["standins"].get(name) or {}).get("pid") == rec["pid"] for name, rec in services.items())


def cmd_start(args: argparse.Namespace) -> None:
    from .cli import LabError, require_up, spawn
    state = require_up()
    stack = stack_of(args, state)
    pids = state.setdefault("workers", {})
    if pid_alive(pids.get(stack)):
        print("worker stand-ins of %s already running (supervisor pid %s)" % (stack, pids[stack]))
        return
    workers_dir(stack).mkdir(parents=True, exist_ok=True)
    (workers_dir(stack) / "supervisor.json").unlink(missing_ok=True)
    pids[stack] = spawn([sys.executable, "-m", "reefguide_lab.workers", "supervise", "--stack-name", stack],
                        "workers-%s.log" % stack, env=dict(os.environ, PYTHONPATH=str(LAB_PKG.parent)))
    save(state)
    deadline = time.time() + args.timeout
    while not ready(stack):
        if not pid_alive(pids[stack]) or time.time() > deadline:
            raise LabError("worker stand-ins of %s did not start; see %s" % (stack, lab_dir() / "logs"))
        time.sleep(0.1)
    services = report(stack)["supervisor"]["services"]
    print("worker stand-ins of %s up (supervisor pid %d): %s" % (stack, pids[stack], ", ".join(
        "%s pid %s (deployment %s)" % (n, r["pid"], r["deployment"]) for n, r in sorted(services.items()))))


def stop_all(state: dict[str, Any]) -> list[int]:
    """Stop every stack's supervisor (it stops its stand-ins); the pids stopped. labctl down calls it."""
    stopped = []
    for pid in state.get("workers", {}).values():
        if pid_alive(pid):
            stop_pid(pid, timeout=15)
            stopped.append(pid)
    return stopped


def cmd_stop(args: argparse.Namespace) -> None:
    from .cli import require_up
    state = require_up()
    stack = stack_of(args, state)
    pid = state.get("workers", {}).get(stack)
    stopped = stop_all({"workers": {stack: pid}} if pid else {})
    state.get("workers", {}).pop(stack, None)
    save(state)
    print("worker stand-ins of %s %s" % (stack, "stopped (supervisor pid %d)" % pid if stopped else "were not running"))


def cmd_status(args: argparse.Namespace) -> None:
    from .cli import require_up
    state = require_up()
    stack = stack_of(args, state)
    doc = report(stack)
    doc["running"] = pid_alive(state.get("workers", {}).get(stack))
    print(json.dumps(doc, indent=2, sort_keys=True))


def request_read(stack: str, services: list[str], timeout: float) -> dict[str, Any]:
    """Ask the stand-ins to read everything; their answers, by service."""
    nonce = uuid.uuid4().hex
    for name in services:
        write_json(workers_dir(stack) / (name + ".request"), {"nonce": nonce})
    deadline = time.time() + timeout
    while True:
        answers = {name: (read_json(workers_dir(stack) / (name + ".json")) or {}) for name in services}
        if all((a.get("read") or {}).get("nonce") == nonce for a in answers.values()):
            return {name: dict(a["read"], deployment=a["deployment"], pid=a["pid"]) for name, a in answers.items()}
        if time.time() > deadline:
            missing = [n for n, a in answers.items() if (a.get("read") or {}).get("nonce") != nonce]
            raise RuntimeError("no read from the stand-in(s) of %s within %d s" % (", ".join(missing), timeout))
        time.sleep(0.05)


def cmd_read(args: argparse.Namespace) -> None:
    from .cli import LabError, require_up
    state = require_up()
    stack = stack_of(args, state)
    services = sorted(report(stack)["supervisor"]["services"])
    if args.service:
        services = [s for s in services if s == args.service]
    if not services or not pid_alive(state.get("workers", {}).get(stack)):
        raise LabError("no worker stand-ins of %s running%s: 'labctl workers start' first"
                       % (stack, " for %s" % args.service if args.service else ""))
    try:
        print(json.dumps(request_read(stack, services, args.timeout), indent=2, sort_keys=True))
    except RuntimeError as exc:
        raise LabError(str(exc)) from exc


def add_parser(sub: Any) -> None:
    """labctl's 'workers' subcommand (cli.py calls this)."""
    p = sub.add_parser("workers", help="worker stand-ins that mount EFS as the ECS tasks do (workers.py)")
    actions = p.add_subparsers(dest="workers_command", required=True)
    for name, func in (("start", cmd_start), ("stop", cmd_stop), ("status", cmd_status), ("read", cmd_read)):
        q = actions.add_parser(name)
        q.add_argument("--stack-name")
        q.add_argument("--timeout", type=float, default=30.0)
        if name == "read":
            q.add_argument("--service")
        q.set_defaults(func=func)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="reefguide_lab.workers")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("supervise")
    p.add_argument("--stack-name", default=DEFAULT_STACK)
    p.set_defaults(func=cmd_supervise)
    p = sub.add_parser("standin")
    for opt in ("--service", "--deployment", "--source", "--mount", "--status", "--request"):
        p.add_argument(opt, required=True)
    p.set_defaults(func=cmd_standin)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
