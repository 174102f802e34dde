"""Session Manager's idle timeout and maximum session duration, as lab settings.

AWS's defaults: a session with no input from the client for 20 minutes is ended (the
account preference goes up to 60), and there is no maximum session duration unless one
is set. `labctl up --ssm-idle-timeout 3s --ssm-max-duration 0` (or the environment
variables below) shortens them for tests; `labctl ssm-limits` shows or changes them on a
running lab. labd hands them to each session's plugin stand-in, which enforces them
(session_end.py) and reports back here: labd counts the sessions ended for idleness or
duration and the module transfers the aws_ssm plugin made through S3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import urllib.request
from collections import Counter
from typing import Any

IDLE_ENV, MAX_ENV = "REEFGUIDE_LAB_SSM_IDLE_TIMEOUT", "REEFGUIDE_LAB_SSM_MAX_DURATION"
AWS_IDLE_TIMEOUT = 1200.0  # 20 min, Session Manager's default
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def seconds(text: str) -> float:
    """'3', '3s', '20m', '1h' -> seconds; 0 means no limit."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError("not a duration (e.g. 3s, 20m, 1h): %r" % text)
    return float(m.group(1)) * UNITS[m.group(2)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `labctl up` (and labd) for the two limits."""
    p.add_argument("--ssm-idle-timeout", type=seconds, default=seconds(os.environ.get(IDLE_ENV, "20m")),
                   metavar="S", help="end a session with no client input for this long (AWS default 20m; 0: never)")
    p.add_argument("--ssm-max-duration", type=seconds, default=seconds(os.environ.get(MAX_ENV, "0")),
                   metavar="S", help="end every session this long after it started (AWS default: none, 0)")


def labd_argv(args: argparse.Namespace) -> list[str]:
    return ["--ssm-idle-timeout", str(args.ssm_idle_timeout), "--ssm-max-duration", str(args.ssm_max_duration)]


class SessionLimits:
    """labd's side: the limits each new session gets, and what the stand-ins reported."""

    def __init__(self, idle_timeout: float, max_duration: float) -> None:
        self.idle_timeout, self.max_duration = idle_timeout, max_duration
        self.lock = threading.Lock()
        self.ended: Counter = Counter()
        self.transfers: Counter = Counter()

    def for_session(self) -> dict[str, float]:
        return {"idle_timeout": self.idle_timeout, "max_duration": self.max_duration}

    def change(self, doc: dict[str, Any]) -> dict[str, Any]:
        if "idle_timeout" in doc:
            self.idle_timeout = seconds(doc["idle_timeout"])
        if "max_duration" in doc:
            self.max_duration = seconds(doc["max_duration"])
        return self.status()

    def report(self, doc: dict[str, Any]) -> None:
        """A stand-in's report: {"ended": "idle"|"duration"|"cut"} or {"transfer": module name}."""
        with self.lock:
            if doc.get("ended") in ("idle", "duration", "cut"):
                self.ended[doc["ended"]] += 1
            if doc.get("transfer"):
                self.transfers[str(doc["transfer"])] += 1

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"idle_timeout": self.idle_timeout, "max_duration": self.max_duration,
                    "sessions_ended": {k: self.ended[k] for k in ("idle", "duration", "cut")},
                    "module_transfers": dict(self.transfers),
                    "module_transfers_total": sum(self.transfers.values())}


def add_command(sub: Any, require_up: Any) -> None:
    """`labctl ssm-limits [--idle-timeout S] [--max-duration S]`."""
    p = sub.add_parser("ssm-limits", help="show or change Session Manager's idle timeout and maximum duration")
    p.add_argument("--idle-timeout", type=seconds, help="for sessions started from now on (0: never)")
    p.add_argument("--max-duration", type=seconds, help="for sessions started from now on (0: none)")

    def run(args: argparse.Namespace) -> None:
        state = require_up()
        change = {k: v for k, v in (("idle_timeout", args.idle_timeout), ("max_duration", args.max_duration))
                  if v is not None}
        req = urllib.request.Request("http://127.0.0.1:%d/lab/ssm-limits" % state["labd_port"],
                                     data=json.dumps(change).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            print(json.dumps(json.load(r), indent=2, sort_keys=True))

    p.set_defaults(func=run)
