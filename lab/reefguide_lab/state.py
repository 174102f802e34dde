"""Where the lab keeps its state, and the small JSON file that says what is up.

Everything the lab creates lives under one directory (REEFGUIDE_LAB_DIR,
default <repo>/.lab): process ids, ports, logs, the EFS storage and the
instance's root-disk stand-ins. `labctl down` removes it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LAB_PKG = Path(__file__).resolve().parent
LAB_BIN = REPO / "lab" / "bin"
LAB_SBIN = REPO / "lab" / "sbin"

DEFAULT_STACK = "reefguide-lab"
DEFAULT_REGION = "ap-southeast-2"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Users inside the lab instance, as on Amazon Linux 2023 (uids picked at
# provisioning time among those the host does not use).
INSTANCE_USERS = ("ec2-user", "ssm-user")


def lab_dir() -> Path:
    return Path(os.environ.get("REEFGUIDE_LAB_DIR") or (REPO / ".lab")).resolve()


def state_file() -> Path:
    return lab_dir() / "lab.json"


def load() -> dict[str, Any]:
    try:
        return json.loads(state_file().read_text())
    except FileNotFoundError:
        return {}


def save(state: dict[str, Any]) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int | None) -> bool:
    """Whether pid runs (a zombie does not): the modules' own rule."""
    return bool(pid) and module_util("controller_watch").process_alive(pid)


@functools.cache
def module_util(name: str) -> Any:
    """module_utils/reefguide/<name>.py, loaded by path (it imports nothing of ansible): a rule the lab
    shares with the modules."""
    path = REPO / "module_utils" / "reefguide" / (name + ".py")
    spec = importlib.util.spec_from_file_location("reefguide_" + name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stop_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still alive after timeout seconds."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def lab_env(state: dict[str, Any]) -> dict[str, str]:
    """The environment that points boto3, the AWS CLI and amazon.aws.aws_ssm at the lab."""
    region = state.get("region", DEFAULT_REGION)
    # With `labctl up --s3-faults`, everything but SSM goes through the fault proxy
    # (it faults only S3 requests); labd still talks to moto directly.
    endpoint_port = state.get("faults_port") or state["moto_port"]
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:%d" % endpoint_port,
        "AWS_ENDPOINT_URL_SSM": "http://127.0.0.1:%d" % state["labd_port"],
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_SESSION_MANAGER_PLUGIN": str(LAB_BIN / "session-manager-plugin"),
        "REEFGUIDE_LAB_DIR": str(lab_dir()),
        "REEFGUIDE_LAB_STACK": state.get("stack_name", DEFAULT_STACK),
        # Keeps a user's own ~/.aws from leaking into the lab.
        "AWS_CONFIG_FILE": str(lab_dir() / "aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(lab_dir() / "aws" / "credentials"),
    }
    if state.get("payload_bytecode"):
        # the lab's instance runs the controller's Python version, so the modules it receives can
        # start without compiling their payload (callback_plugins/reefguide_preload.py); AWS's
        # instances run another (Amazon Linux 2023: 3.9), where bytecode would only add bytes;
        # compiled once for all the lab's runs
        env["REEFGUIDE_PAYLOAD_BYTECODE"] = str(lab_dir() / "bytecode")
    # `labctl up --iam`: the operator's keys (iam/operator-policy.json), not moto's anonymous ones.
    env.update(iam_credentials(state, "reefguide-operator") or CREDENTIALS)
    return env


def iam_credentials(state: dict[str, Any], user: str) -> dict[str, str] | None:
    """The keys of an IAM user `labctl up --iam` created (None without --iam)."""
    rec = state.get("iam", {}).get("users", {}).get(user)
    if not rec:
        return None
    return {"AWS_ACCESS_KEY_ID": rec["access_key_id"], "AWS_SECRET_ACCESS_KEY": rec["secret_access_key"]}


def admin_credentials(state: dict[str, Any]) -> dict[str, str]:
    """Keys for the lab's own calls (labctl, labd's supervisor): lab-admin under --iam."""
    return iam_credentials(state, "lab-admin") or dict(CREDENTIALS)


# -- what labctl and its parts (workers, iam) share -------------------------------------------

class LabError(RuntimeError):
    pass


def die(msg: str) -> None:
    sys.stderr.write("labctl: %s\n" % msg)
    sys.exit(1)


def client(state: dict[str, Any], service: str):
    import boto3  # here: parts of the lab that run under the instance's python import this module

    env = lab_env(state)
    env.update(admin_credentials(state))  # the lab's own calls: lab-admin under --iam
    endpoint = env["AWS_ENDPOINT_URL_SSM"] if service == "ssm" else env["AWS_ENDPOINT_URL"]
    return boto3.client(
        service, endpoint_url=endpoint, region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def spawn(argv: list[str], log_name: str, env: dict[str, str] | None = None) -> int:
    logs = lab_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / log_name, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=env, cwd=str(REPO))
    return proc.pid


def require_up() -> dict[str, Any]:
    state = load()
    if not state or not pid_alive(state.get("moto_pid")) or not pid_alive(state.get("labd_pid")):
        die("the lab is not up: run 'lab/labctl up' (or 'make demo')")
    if state.get("faults_pid") and not pid_alive(state["faults_pid"]):
        die("the lab's S3 fault proxy (pid %s) is not running; see %s" % (state["faults_pid"], lab_dir() / "logs"))
    return state
