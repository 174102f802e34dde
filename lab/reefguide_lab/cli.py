"""labctl: bring the ReefGuide lab up and down, and talk to it.

    labctl up [--stack-name N] [--boot-delay S]   start moto + labd, deploy the stack, stop the instance
              [--iam]                             ... and enforce iam/*.json (operator keys in 'env', iam/README.md)
    labctl down                                   stop everything the lab started, by pid; remove its state
    labctl status                                 processes, stack, instance state, SSM sessions opened
    labctl env                                    shell exports that point AWS tools and Ansible at the lab
    labctl exec -- CMD ...                        run CMD with that environment
    labctl deploy --stack-name N                  deploy one more stack (a second deployment)
    labctl start | stop [--stack-name N]          power the management instance on or off (EC2 API)
    labctl boot-delay SECONDS                     how long the SSM agent takes to come Online
    labctl shell [--user U]                       a root (or U) shell inside the running instance
    labctl efs-path [--stack-name N]              the host directory that holds the stack's EFS data
    labctl efs-reads [--reset]                    bytes read from EFS through the instance's mount (json)
    labctl workers start|job|stop|status|read     upstream's ECS side: services, capacity manager, workers
    labctl up --s3-faults RATE [--s3-fault-kinds K,..] [--s3-stall-seconds S] [--s3-fault-seed N]
                                                  the same, with a flaky S3 (faults.py) in front of moto
    labctl faults [--rate R] [--kinds K,..] [...]  show or change the S3 faults and their counters
    labctl up --ssm-idle-timeout S [--ssm-max-duration S]
                                                  Session Manager's limits (default 20m, none; ssm_limits.py)
    labctl ssm-limits [--idle-timeout S] [--max-duration S]   show or change them for new sessions
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import efs_reads, ssm_limits
from . import iam as lab_iam
from . import instance as inst
from . import workers as lab_workers
from .state import (
    DEFAULT_REGION,
    DEFAULT_STACK,
    LAB_PKG,
    REPO,
    LabError,
    client,
    die,
    lab_dir,
    lab_env,
    load,
    module_util,
    pid_alive,
    require_up,
    save,
    spawn,
    stop_pid,
)


def output_key(stack_name: str) -> str:
    """module_utils/reefguide/stack.py: the slug rule, shared with the modules."""
    return module_util("stack").output_key(stack_name)


def wait_http(url: str, timeout: float, pid: int, name: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not pid_alive(pid):
            raise LabError("%s exited during start-up; see %s" % (name, lab_dir() / "logs"))
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    raise LabError("%s did not answer on %s within %d s" % (name, url, timeout))


def check_prerequisites() -> str:
    """Raises what the lab lacks; returns the version of the instance's python (e.g. '3.11')."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates mount and PID namespaces for the instance); "
                       "run it as root, e.g. in CI or a VM")
    for tool, pkg in (("unshare", "util-linux"), ("nsenter", "util-linux"), ("sudo", "sudo"),
                      ("curl", "curl"), ("runuser", "util-linux")):
        if not shutil.which(tool):
            raise LabError("%s is missing: apt-get install -y %s (make setup does it)" % (tool, pkg))
    probe = subprocess.run(["/usr/bin/python3", "-c", "import boto3, sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise LabError("the instance's python (/usr/bin/python3) has no boto3: apt-get install -y python3-boto3")
    return probe.stdout.strip()


def deploy(state: dict[str, Any], stack_name: str) -> dict[str, Any]:
    cf = client(state, "cloudformation")
    body = (LAB_PKG / "template.yaml").read_text().replace("__OUTPUT_KEY__", output_key(stack_name))
    cf.create_stack(StackName=stack_name, TemplateBody=body)
    cf.get_waiter("stack_create_complete").wait(StackName=stack_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    resources = cf.describe_stack_resources(StackName=stack_name)["StackResources"]
    by_type = {r["ResourceType"]: r.get("PhysicalResourceId") for r in resources}
    info = {
        "stack_name": stack_name,
        "instance_id": by_type["AWS::EC2::Instance"],
        "bucket": by_type["AWS::S3::Bucket"],
        "fs_id": by_type["AWS::EFS::FileSystem"],
        "cluster": by_type.get("AWS::ECS::Cluster"),  # the workers' (ecs_workers, iam ${ClusterName})
        "output_key": output_key(stack_name),
    }
    inst.provision_efs(info["fs_id"])
    state.setdefault("stacks", {})[stack_name] = info
    state.setdefault("instance_fs", {})[info["instance_id"]] = info["fs_id"]
    save(state)
    # The real management instance is kept stopped between uses.
    ec2 = client(state, "ec2")
    ec2.stop_instances(InstanceIds=[info["instance_id"]])
    wait_instance(state, info["instance_id"], running=False)
    return info


def labd_status(state: dict[str, Any]) -> dict[str, Any]:
    url = "http://127.0.0.1:%d/lab/status" % state["labd_port"]
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def wait_instance(state: dict[str, Any], instance_id: str, running: bool, timeout: float = 30) -> None:
    """Until the supervisor has booted (or halted) the instance's namespace."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = labd_status(state)["instances"].get(instance_id, {})
        if bool(rec.get("init_pid")) == running and rec.get("ec2_state") == ("running" if running else "stopped"):
            return
        time.sleep(0.05)
    raise LabError("instance %s did not %s within %d s" % (instance_id, "boot" if running else "halt", timeout))


UP_ATTEMPTS = 3


def start_lab(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Starts moto, the fault proxy if asked, labd, and deploys the stack; on failure stops what it started."""
    if lab_dir().exists():
        efs_reads.release_storage()
        shutil.rmtree(lab_dir())
    (lab_dir() / "logs").mkdir(parents=True)
    efs_reads.guard_storage()
    (lab_dir() / "aws").mkdir()
    (lab_dir() / "aws" / "config").write_text("[default]\nregion = %s\n" % args.region)
    (lab_dir() / "aws" / "credentials").write_text(
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    state = {"region": args.region, "stack_name": args.stack_name, "moto_port": 0, "labd_port": 0}
    state["moto_port"] = _free_port()
    # moto_server with ECS tasks as AWS keeps them, and with --iam checks on presigned S3 URLs (moto_lab.py)
    moto_argv = [sys.executable, "-m", "reefguide_lab.moto_lab"] + (["--iam"] if args.iam else [])
    state["moto_pid"] = spawn(moto_argv + ["-H", "127.0.0.1", "-p", str(state["moto_port"])], "moto.log",
                              env=dict(os.environ, PYTHONPATH=str(REPO / "lab")))
    save(state)
    if args.s3_faults is not None:
        state["faults_port"] = _free_port()
        state["faults_pid"] = spawn([sys.executable, "-m", "reefguide_lab.faults", "--port", str(state["faults_port"]),
                                     "--upstream-port", str(state["moto_port"]), "--rate", str(args.s3_faults),
                                     "--kinds", args.s3_fault_kinds, "--stall-seconds", str(args.s3_stall_seconds),
                                     "--seed", str(args.s3_fault_seed)],
                                    "faults.log", env=dict(os.environ, PYTHONPATH=str(REPO / "lab")))
        save(state)
    state["labd_port"] = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "lab"), REEFGUIDE_LAB_DIR=str(lab_dir()))
    state["labd_pid"] = spawn([sys.executable, "-m", "reefguide_lab.labd", "--port", str(state["labd_port"]),
                               "--moto-port", str(state["moto_port"]), "--region", args.region,
                               "--boot-delay", str(args.boot_delay)] + ssm_limits.labd_argv(args), "labd.log", env=env)
    save(state)
    try:
        wait_http("http://127.0.0.1:%d/moto-api/" % state["moto_port"], 30, state["moto_pid"], "moto server")
        wait_http("http://127.0.0.1:%d/lab/status" % state["labd_port"], 30, state["labd_pid"], "labd")
        if state.get("faults_pid"):
            wait_http("http://127.0.0.1:%d/lab/faults" % state["faults_port"], 30, state["faults_pid"],
                      "S3 fault proxy")
        info = deploy(state, args.stack_name)
        if args.iam:
            lab_iam.setup(state, client, labd_status)
    except Exception:
        cmd_down(argparse.Namespace(keep=True))
        raise
    return state, info


def cmd_up(args: argparse.Namespace) -> None:
    state = load()
    if state and pid_alive(state.get("moto_pid")):
        print("lab already up (moto pid %s, labd pid %s); 'labctl down' first to start afresh"
              % (state["moto_pid"], state.get("labd_pid")))
        return
    instance_python = check_prerequisites()
    t0 = time.time()
    for attempt in range(1, UP_ATTEMPTS + 1):
        try:
            state, info = start_lab(args)
            break
        except Exception as exc:  # noqa: BLE001 - reported whole below
            # moto's threaded server answers an occasional 500 (an exception of its own) on a
            # busy machine; a fresh start is clean, and AWS would be retried the same way.
            if attempt == UP_ATTEMPTS or "500 Internal Server Error" not in str(exc):
                die("lab start failed: %s" % exc)
            log = lab_dir() / "logs" / "moto.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            cause = text[text.rfind("Traceback"):].strip().splitlines()[-12:] if "Traceback" in text else []
            print("labctl: moto answered 500 while the lab started (attempt %d of %d); starting afresh. "
                  "moto's log said:\n  %s" % (attempt, UP_ATTEMPTS, "\n  ".join(cause) or "(no traceback)"),
                  file=sys.stderr)
    state["up_seconds"] = round(time.time() - t0, 2)
    # the playbooks' payloads may carry bytecode: the instance runs this Python's version (state.lab_env)
    state["payload_bytecode"] = instance_python == "%d.%d" % sys.version_info[:2]
    save(state)
    print("lab up in %.1f s: stack %s, instance %s (stopped), bucket %s, EFS %s"
          % (state["up_seconds"], info["stack_name"], info["instance_id"], info["bucket"], info["fs_id"]))
    if args.iam:
        print("IAM enforced: 'labctl env' hands out reefguide-operator's keys (iam/operator-policy.json), "
              "the instance has reefguide-instance's (iam/instance-policy.json)")
    print("moto on 127.0.0.1:%d (pid %d), SSM endpoint on 127.0.0.1:%d (pid %d)"
          % (state["moto_port"], state["moto_pid"], state["labd_port"], state["labd_pid"]))
    if state.get("faults_pid"):
        print("S3 fault proxy on 127.0.0.1:%d (pid %d): %s of S3 requests faulted (%s); AWS_ENDPOINT_URL points at it"
              % (state["faults_port"], state["faults_pid"], args.s3_faults, args.s3_fault_kinds))
    print('Next: eval "$(lab/labctl env)"  or  lab/labctl exec -- ansible-playbook stage_data.yml ...')


def _free_port() -> int:
    from .state import free_port
    return free_port()


def lab_processes(state: dict[str, Any]) -> list[int]:
    """Every live process the lab started: its servers and anything left in an instance."""
    pids = [p for p in (state.get("labd_pid"), state.get("faults_pid"), state.get("moto_pid")) if pid_alive(p)]
    root = str(lab_dir())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in pids:
            continue
        try:
            cmd = Path("/proc/%s/cmdline" % entry).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("instance_init.py" in cmd or "reefguide_lab.workers" in cmd) and root in cmd:
            pids.append(int(entry))
    return pids


def cmd_down(args: argparse.Namespace) -> None:
    state = load()
    if not state:
        print("lab is not up")
        return
    lab_workers.stop_all(state)  # the worker stand-ins, before the stack they follow goes
    # labd first: on SIGTERM it halts every instance namespace.
    for key in ("labd_pid", "faults_pid", "moto_pid"):
        pid = state.get(key)
        if pid_alive(pid):
            stop_pid(pid)
    leftovers = lab_processes(state)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    still = lab_processes(state)
    if still:
        die("processes still running after down: %s" % still)
    efs_reads.release_storage()
    if not getattr(args, "keep", False):
        shutil.rmtree(lab_dir(), ignore_errors=True)
    print("lab down: stopped %s" % ", ".join(
        "%s %s" % (k[:-4], state[k]) for k in ("labd_pid", "faults_pid", "moto_pid") if state.get(k)))


def cmd_status(args: argparse.Namespace) -> None:
    state = require_up()
    doc = {"dir": str(lab_dir()), "moto": {"pid": state["moto_pid"], "port": state["moto_port"]},
           "labd": {"pid": state["labd_pid"], "port": state["labd_port"]},
           "stacks": state.get("stacks", {}), "up_seconds": state.get("up_seconds")}
    doc.update(labd_status(state))
    doc["efs_reads"] = efs_reads.brief()
    if state.get("faults_pid"):
        doc["s3_faults"] = dict(faults_request(state), pid=state["faults_pid"], port=state["faults_port"])
    print(json.dumps(doc, indent=2, sort_keys=True))


def faults_request(state: dict[str, Any], change: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET (or POST a change to) the fault proxy's /lab/faults."""
    req = urllib.request.Request("http://127.0.0.1:%d/lab/faults" % state["faults_port"],
                                 data=json.dumps(change).encode() if change is not None else None,
                                 method="POST" if change is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        raise LabError("the S3 fault proxy refused the change: %s" % json.load(exc).get("error"))


def cmd_faults(args: argparse.Namespace) -> None:
    state = require_up()
    if not state.get("faults_pid"):
        die("this lab has no S3 fault proxy: bring it up with 'labctl up --s3-faults RATE' (RATE may be 0)")
    change: dict[str, Any] = {}
    for name in ("rate", "kinds", "stall_seconds", "seed", "match", "max_faults", "latency_seconds"):
        if getattr(args, name) is not None:
            change[name] = getattr(args, name)
    if args.presigned is not None:
        change["presigned"] = args.presigned == "yes"
    if args.unlimited:
        change["max_faults"] = None
    if args.reset_counters:
        change["reset_counters"] = True
    if args.release_stalls:
        change["release_stalls"] = True
    print(json.dumps(faults_request(state, change or None), indent=2, sort_keys=True))


def cmd_env(args: argparse.Namespace) -> None:
    state = require_up()
    for k, v in sorted(lab_env(state).items()):
        print("export %s=%s" % (k, _shquote(v)))
    print("unset AWS_PROFILE AWS_SESSION_TOKEN")


def _shquote(v: str) -> str:
    import shlex
    return shlex.quote(v)


def cmd_exec(args: argparse.Namespace) -> None:
    state = require_up()
    if not args.argv:
        die("usage: labctl exec -- CMD [ARGS...]")
    env = dict(os.environ)
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    env.update(lab_env(state))
    argv = args.argv[1:] if args.argv[0] == "--" else args.argv
    os.execvpe(argv[0], argv, env)


def stack_info(state: dict[str, Any], name: str | None) -> dict[str, Any]:
    name = name or state.get("stack_name", DEFAULT_STACK)
    if name not in state.get("stacks", {}):
        die("no lab stack %r (have: %s)" % (name, ", ".join(state.get("stacks", {})) or "none"))
    return state["stacks"][name]


def cmd_deploy(args: argparse.Namespace) -> None:
    state = require_up()
    info = deploy(state, args.stack_name)
    print(json.dumps(info, indent=2))


def cmd_power(args: argparse.Namespace) -> None:
    state = require_up()
    info = stack_info(state, args.stack_name)
    ec2 = client(state, "ec2")
    if args.command == "start":
        ec2.start_instances(InstanceIds=[info["instance_id"]])
    else:
        ec2.stop_instances(InstanceIds=[info["instance_id"]])
    wait_instance(state, info["instance_id"], running=args.command == "start")
    print("%s %s" % (info["instance_id"], "running" if args.command == "start" else "stopped"))


def cmd_boot_delay(args: argparse.Namespace) -> None:
    state = require_up()
    req = urllib.request.Request("http://127.0.0.1:%d/lab/boot-delay" % state["labd_port"],
                                 data=json.dumps({"seconds": args.seconds}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        print("boot delay now %s s" % json.load(r)["boot_delay"])


def cmd_shell(args: argparse.Namespace) -> None:
    state = require_up()
    info = stack_info(state, args.stack_name)
    rec = labd_status(state)["instances"].get(info["instance_id"], {})
    if not rec.get("init_pid"):
        die("instance %s is stopped: 'labctl start' first" % info["instance_id"])
    argv = inst.nsenter_argv(rec["init_pid"]) + ["runuser", "-l", args.user]
    command = args.command_argv[1:] if args.command_argv[:1] == ["--"] else args.command_argv
    if command:
        argv += ["-c", " ".join(_shquote(a) for a in command)]
    os.execvp(argv[0], argv)


def cmd_efs_path(args: argparse.Namespace) -> None:
    state = require_up()
    print(inst.efs_storage() / stack_info(state, args.stack_name)["fs_id"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="labctl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up")
    p.add_argument("--stack-name", default=os.environ.get("REEFGUIDE_LAB_STACK", DEFAULT_STACK))
    p.add_argument("--region", default=DEFAULT_REGION)
    p.add_argument("--boot-delay", type=float, default=float(os.environ.get("REEFGUIDE_LAB_BOOT_DELAY", "2")))
    p.add_argument("--s3-faults", type=float, metavar="RATE",
                   help="put the fault proxy in front of moto, faulting this share (0-1) of S3 requests")
    p.add_argument("--s3-fault-kinds", default="500,503,reset,stall", metavar="K,..")
    p.add_argument("--s3-stall-seconds", type=float, default=2.0, metavar="S")
    p.add_argument("--s3-fault-seed", type=int, default=0, metavar="N")
    p.add_argument("--iam", action="store_true",
                   help="enforce IAM with the policies of iam/ (operator and instance users; see iam/README.md)")
    ssm_limits.add_arguments(p)
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down")
    p.add_argument("--keep", action="store_true", help="keep the lab directory (logs, EFS data)")
    p.set_defaults(func=cmd_down)
    sub.add_parser("status").set_defaults(func=cmd_status)
    sub.add_parser("env").set_defaults(func=cmd_env)
    p = sub.add_parser("exec")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)
    p = sub.add_parser("deploy")
    p.add_argument("--stack-name", required=True)
    p.set_defaults(func=cmd_deploy)
    for name in ("start", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--stack-name")
        p.set_defaults(func=cmd_power)
    p = sub.add_parser("boot-delay")
    p.add_argument("seconds", type=float)
    p.set_defaults(func=cmd_boot_delay)
    p = sub.add_parser("shell")
    p.add_argument("--stack-name")
    p.add_argument("--user", default="root")
    p.add_argument("command_argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_shell)
    p = sub.add_parser("faults", help="show or change the S3 fault proxy's settings; shows its counters")
    p.add_argument("--rate", type=float)
    p.add_argument("--kinds", help="comma-separated: 500,503,reset,stall (and drop: applied, answer lost)")
    p.add_argument("--stall-seconds", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--match", help="regex searched in 'METHOD /path': only matching S3 requests are faulted ('' = all)")
    p.add_argument("--presigned", choices=("yes", "no"), help="fault presigned-URL requests too (default yes)")
    p.add_argument("--max-faults", type=int, help="stop after this many faults")
    p.add_argument("--latency-seconds", type=float,
                   help="hold every S3 request that --match (and --presigned) let through this long first")
    p.add_argument("--unlimited", action="store_true", help="no limit on the number of faults")
    p.add_argument("--reset-counters", action="store_true")
    p.add_argument("--release-stalls", action="store_true",
                   help="end the stalls now held, and let later ones end at once until --stall-seconds is set again")
    p.set_defaults(func=cmd_faults)
    ssm_limits.add_command(sub, require_up)
    lab_workers.add_parser(sub)
    p = sub.add_parser("efs-path")
    p.add_argument("--stack-name")
    p.set_defaults(func=cmd_efs_path)
    efs_reads.add_parser(sub)
    args = ap.parse_args(argv)
    try:
        args.func(args)
    except LabError as exc:
        die(str(exc))


if __name__ == "__main__":
    main()
