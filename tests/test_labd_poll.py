"""labd's answers about EC2 state (lab/reefguide_lab/labd.py): never older than FRESH when asked,
even while a slow background poll is still in flight. Under load a poll of moto takes seconds; a
status read right after a stop was answered from the poll before it, and a test saw 'running'."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from helpers import ROOT

sys.path.insert(0, str(ROOT / "lab"))
from reefguide_lab import labd  # noqa: E402

IID = "i-0123456789abcdef0"


class SlowEC2:
    """describe_instances with moto's answer shape; the first call blocks until released."""

    def __init__(self) -> None:
        self.state = "running"
        self.calls = 0
        self.release = threading.Event()
        self.entered = threading.Event()

    def get_paginator(self, _op: str) -> Any:
        return self

    def paginate(self) -> list[dict[str, Any]]:
        self.calls += 1
        answer = self.state  # read when the request reaches EC2
        if self.calls == 1:
            self.entered.set()
            self.release.wait(10)
        return [{"Reservations": [{"Instances": [{"InstanceId": IID, "State": {"Name": answer}}]}]}]


def supervisor(tmp_path: Any, monkeypatch: Any) -> tuple[labd.Supervisor, SlowEC2]:
    monkeypatch.setenv("REEFGUIDE_LAB_DIR", str(tmp_path))  # no lab.json: no file system, no boot
    sup = labd.Supervisor("http://127.0.0.1:1", "ap-southeast-2", boot_delay=0)
    ec2 = SlowEC2()
    sup.ec2_client = lambda: ec2  # type: ignore[method-assign]
    return sup, ec2


def test_a_status_read_during_a_slow_poll_says_what_ec2_says_now(tmp_path: Any, monkeypatch: Any) -> None:
    sup, ec2 = supervisor(tmp_path, monkeypatch)
    sup.instances[IID] = {"init_pid": None, "running_since": None, "registered": False, "ec2_state": "running"}
    background = threading.Thread(target=sup.poll_once)
    background.start()
    assert ec2.entered.wait(10)
    ec2.state = "stopped"  # StopInstances lands while the background poll is in flight
    time.sleep(labd.FRESH / 2)
    sup.fresh()
    assert sup.status()["instances"][IID]["ec2_state"] == "stopped"
    ec2.release.set()
    background.join(10)
    # the slow poll began before the one applied: its 'running' is dropped when it lands
    assert sup.status()["instances"][IID]["ec2_state"] == "stopped"
    assert ec2.calls == 2


def test_an_answer_within_fresh_is_reused(tmp_path: Any, monkeypatch: Any) -> None:
    sup, ec2 = supervisor(tmp_path, monkeypatch)
    ec2.release.set()
    sup.fresh()
    sup.fresh()
    assert ec2.calls == 1
    time.sleep(labd.FRESH * 1.5)
    sup.fresh()
    assert ec2.calls == 2
