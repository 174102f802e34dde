"""A handle on a running lab, for tests: start/stop its instance, run
commands inside it, reach it with Ansible over the real aws_ssm plugin."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import boto3

from helpers import ROOT, ansible_env

LABCTL = str(ROOT / "lab" / "labctl")


class Lab:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.base_env = dict(os.environ, REEFGUIDE_LAB_DIR=str(self.dir))
        self._clients: dict[tuple[str, str], Any] = {}

    # -- life cycle ------------------------------------------------------------
    def ctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([LABCTL, *args], env=self.base_env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError("labctl %s failed (%s): %s%s" % (" ".join(args), proc.returncode,
                                                                   proc.stdout, proc.stderr))
        return proc

    def up(self, *args: str) -> Lab:
        self.ctl("up", *args)
        self.refresh()
        return self

    def down(self) -> subprocess.CompletedProcess:
        return self.ctl("down", check=False)

    def refresh(self) -> None:
        self.state = json.loads((self.dir / "lab.json").read_text())
        self.env: dict[str, str] = dict(self.base_env)
        self.env.pop("AWS_PROFILE", None)
        for line in self.ctl("env").stdout.splitlines():
            if line.startswith("export "):
                k, _, v = line[len("export "):].partition("=")
                self.env[k] = v.strip("'")
        stack = self.state["stacks"][self.state["stack_name"]]
        self.stack_name = stack["stack_name"]
        self.instance_id = stack["instance_id"]
        self.bucket = stack["bucket"]
        self.fs_id = stack["fs_id"]
        self.efs_path = self.dir / "efs" / self.fs_id

    def status(self) -> dict[str, Any]:
        """Everything `labctl status` prints (the lab's processes, stacks, EFS reads, S3 faults)."""
        return json.loads(self.ctl("status").stdout)

    def supervisor(self) -> dict[str, Any]:
        """labd's part of the status (instances, SSM sessions), read from labd itself: the
        loops that wait on it would spend 0.25 s of CPU per `labctl` process."""
        return self.served_json("labd_port", "/lab/status")

    def s3_faults(self) -> dict[str, Any]:
        """The S3 fault proxy's settings and counters, read from the proxy as `labctl status` does."""
        return self.served_json("faults_port", "/lab/faults")

    def hold_next(self, pattern: str) -> None:
        """The S3 fault proxy (a lab up with --s3-faults) holds the next request whose 'METHOD /path'
        matches pattern until release_held: e.g. a module on its way to the instance (the SSM plugin
        copies it through S3), to stop a run at a chosen step. Any latency set is off meanwhile."""
        self.ctl("faults", "--rate", "1", "--kinds", "stall", "--stall-seconds", "900", "--max-faults", "1",
                 "--latency-seconds", "0", "--match", pattern, "--reset-counters")

    def holding(self) -> bool:
        return self.s3_faults()["counters"]["faults"] >= 1

    def release_held(self) -> None:
        """End the hold (the held request is reset; its client retries) and fault nothing more."""
        self.ctl("faults", "--release-stalls", "--rate", "0")

    def cut_sessions(self, *cuts: tuple[str, int]) -> dict[str, Any]:
        """Session Manager ends the session at the nth command matching each pattern (counted over
        all sessions from now on), after the command ran and before its end reached the client
        (lab/reefguide_lab/session_cuts.py). No cuts: disarm."""
        return self.served_json("labd_port", "/lab/session-cuts",
                                {"cuts": [{"match": match, "nth": nth} for match, nth in cuts]})

    def served_json(self, port_key: str, path: str, post: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The JSON a lab process serves on loopback (its port read from lab.json now); post: sent as a POST."""
        port = json.loads((self.dir / "lab.json").read_text())[port_key]
        data = None if post is None else json.dumps(post).encode()
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), data=data, timeout=10) as r:
            return json.load(r)

    def client(self, service: str) -> Any:
        """A boto3 client of the lab, one per service and endpoint: tests call this in wait loops,
        and a new client costs 0.05-0.25 s of CPU."""
        endpoint = self.env["AWS_ENDPOINT_URL_SSM"] if service == "ssm" else self.env["AWS_ENDPOINT_URL"]
        if (service, endpoint) not in self._clients:
            self._clients[service, endpoint] = boto3.client(
                service, endpoint_url=endpoint, region_name=self.env["AWS_REGION"],
                aws_access_key_id="testing", aws_secret_access_key="testing")
        return self._clients[service, endpoint]

    def start_instance(self, wait_online: bool = True, timeout: float = 60) -> None:
        self.ctl("start")
        if wait_online:
            deadline = time.time() + timeout
            while not self.online():
                assert time.time() < deadline, "instance never came Online"
                time.sleep(0.1)

    def stop_instance(self) -> None:
        self.ctl("stop")

    def online(self) -> bool:
        return bool(self.supervisor()["instances"].get(self.instance_id, {}).get("online"))

    def set_boot_delay(self, seconds: float) -> None:
        self.ctl("boot-delay", str(seconds))

    def efs_reads(self, reset: bool = False) -> dict[str, Any]:
        """The lab's count of EFS reads through the instance's mount (lab/reefguide_lab/efs_reads.py)."""
        return json.loads(self.ctl("efs-reads", *(["--reset"] if reset else [])).stdout)

    def sessions_started(self) -> int:
        return int(self.supervisor()["sessions_started"].get(self.instance_id, 0))

    def init_pid(self) -> Optional[int]:
        return self.supervisor()["instances"].get(self.instance_id, {}).get("init_pid")

    def instance_exec(self, argv: list[str], user: str = "root", check: bool = False) -> subprocess.CompletedProcess:
        """Run argv inside the running instance (not over SSM: a test's back door)."""
        pid = self.init_pid()
        assert pid, "instance %s is not running" % self.instance_id
        cmd = ["nsenter", "--target", str(pid), "--mount", "--pid", "--uts", "--",
               "runuser", "-u", user, "--"] + argv
        return subprocess.run(cmd, capture_output=True, text=True, check=check)

    # -- Ansible -----------------------------------------------------------------
    def inventory(self, path: Path, extra: Optional[dict[str, Any]] = None) -> Path:
        host = {
            "ansible_connection": "amazon.aws.aws_ssm",
            "ansible_aws_ssm_instance_id": self.instance_id,
            "ansible_aws_ssm_bucket_name": self.bucket,
            "ansible_aws_ssm_region": self.env["AWS_REGION"],
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        host.update(extra or {})
        path.write_text(json.dumps({"all": {"hosts": {"mgmt": host}}}))
        return path

    def ansible(
        self, inventory: Path, module: str, args: str = "", become: bool = False
    ) -> subprocess.CompletedProcess:
        cmd = [str(ROOT / ".venv" / "bin" / "ansible"), "-i", str(inventory), "mgmt", "-m", module]
        if args:
            cmd += ["-a", args]
        if become:
            cmd.append("--become")
        env = ansible_env(self.env)
        env["ANSIBLE_STDOUT_CALLBACK"] = "default"
        env["ANSIBLE_CALLBACK_RESULT_FORMAT"] = "json"
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


class PullWatcher:
    """Samples the pull processes (s3_sync modules) running in the instance: the most at once, and
    every one seen (by pid and start time: each is a pull job that ran)."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.most, self.stop = lab, 0, threading.Event()
        self.seen: set[tuple[str, str]] = set()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def pulls(self) -> int:
        init = self.lab.init_pid()
        try:
            ns = os.readlink("/proc/%d/ns/pid" % init) if init else None
        except OSError:  # the instance stopped meanwhile
            ns = None
        if ns is None:
            return 0
        n = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path("/proc/%s/cmdline" % pid).read_bytes().split(b"\0")
                if os.readlink("/proc/%s/ns/pid" % pid) != ns:
                    continue
                # the module's own process (async_wrapper's carry its path further down their argv)
                if not (len(argv) > 1 and argv[1].endswith(b"AnsiballZ_s3_sync.py")):
                    continue
                started = Path("/proc/%s/stat" % pid).read_bytes().rsplit(b")", 1)[1].split()[19]
            except (OSError, IndexError):
                continue
            n += 1
            self.seen.add((pid, started.decode()))
        return n

    def watch(self) -> None:
        while not self.stop.wait(0.2):
            self.most = max(self.most, self.pulls())

    def done(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.most


@contextmanager
def running_lab(directory: Path, *up_args: str) -> Iterator[Lab]:
    """A lab of its own in directory, up with --boot-delay 1 and up_args, brought down however the block ends."""
    lab = Lab(directory)
    try:
        lab.up("--boot-delay", "1", *up_args)
        yield lab
    finally:
        lab.down()
