"""The S3 endpoint of the benchmark: `rclone serve s3` on a free loopback
port, serving a scratch directory (docs/architecture.md, "S3 engine": moto
is too slow to measure anything but itself).

Buckets are the top-level directories of the scratch directory and keys are
paths below them, so what a push wrote can be checked on disk. Object
metadata (x-amz-meta-*) is kept in the server's memory: one server per data
set, with no cap on the number of objects whose metadata it keeps.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from peers import Endpoint, rclone_binary

BUCKET = "bench"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class S3Server:
    """Context manager: starts the server, yields its Endpoint, stops it by
    its pid (SIGTERM, then SIGKILL) however the block ends."""

    def __init__(self, scratch: Path, log: Path, cpu: Optional[int] = None):
        self.scratch = scratch
        self.log = log
        self.cpu = cpu  # pin the server to this CPU (taskset), or None
        self.proc: Optional[subprocess.Popen] = None
        self.endpoint: Optional[Endpoint] = None

    def argv(self, port: int, key: str, secret: str) -> list[str]:
        argv = [
            str(rclone_binary()), "serve", "s3", str(self.scratch),
            "--addr", "127.0.0.1:%d" % port,
            "--auth-key", "%s,%s" % (key, secret),
            "--force-path-style=true",
            "--metadata-max-objects", "0",  # keep every object's metadata (checksums, mtimes)
            "--config", "/dev/null",
            "--log-level", "NOTICE",
        ]
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu)] + argv
        return argv

    def __enter__(self) -> Endpoint:
        (self.scratch / BUCKET).mkdir(parents=True, exist_ok=True)
        key, secret = "bench", secrets.token_hex(16)
        for _attempt in range(3):  # the port may be taken between probe and bind
            port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(self.argv(port, key, secret), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            if wait_listening(port, self.proc):
                self.endpoint = Endpoint("http://127.0.0.1:%d" % port, BUCKET, key, secret)
                return self.endpoint
            self.stop()
        raise RuntimeError("rclone serve s3 did not start; see %s" % self.log)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
