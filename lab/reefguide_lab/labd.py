"""labd: the lab's SSM endpoint and instance supervisor, one process.

moto serves EC2, S3, EFS, CloudFormation and most of SSM, but has no
sessions: this endpoint answers StartSession, TerminateSession, ResumeSession and
DescribeInstanceInformation itself, from moto's EC2 state, and passes every
other SSM call to moto unchanged. Beside it, a supervisor watches moto's
instances: one that goes `running` gets a namespace (instance.boot), one
that leaves it loses it (instance.halt). The SSM agent "comes Online" a
configurable boot delay after the instance started running.

Run by `labctl up`; stopped by `labctl down` (SIGTERM: halts every instance).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import signal
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
from botocore.config import Config

from . import efs_reads
from . import iam as lab_iam
from . import instance as inst
from .session_cuts import SessionCuts
from .ssm_limits import SessionLimits
from .ssm_limits import add_arguments as add_limit_arguments
from .state import admin_credentials, lab_dir, load

# EC2 states are polled every POLL seconds while the lab is in use (an SSM call, a lab
# command or an instance change in the last ACTIVE_SECONDS), else every POLL_IDLE: an idle
# lab's polling cost a test suite 6% of a core per lab. Every call polls first unless the answer
# held is from a poll begun less than FRESH ago, so answers are never older than that; the
# background polls only catch what nobody asks about (an instance stopped: its processes
# halted, its sessions ended), and at 0.2 s they cost 28 ms of CPU a second per lab in use
# (labd's and moto's), 1.0 s a fifth.
FRESH = 0.2
POLL = 1.0
POLL_IDLE = 2.0
ACTIVE_SECONDS = 30.0


def account_reads(hook: Any, *args: str) -> None:
    """The EFS read accounting at a session's start or end (efs_reads.py); never fails a call."""
    try:
        hook(*args)
    except Exception:  # noqa: BLE001 - the accounting must not break SSM
        traceback.print_exc()


class Supervisor:
    def __init__(self, moto_url: str, region: str, boot_delay: float, limits: SessionLimits | None = None) -> None:
        self.moto_url, self.region = moto_url, region
        self.credentials: dict[str, str] = {}
        self.ec2: Any = None
        self.boot_delay = boot_delay
        self.lock = threading.RLock()
        self.instances: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.sessions_started: dict[str, int] = {}
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.active_until = 0.0
        self.applied_poll = 0.0  # when the poll whose answer the records hold began
        self.limits = limits or SessionLimits(0, 0)  # Session Manager's idle timeout and max duration
        self.cuts = SessionCuts()  # sessions a test ends at a chosen command (session_cuts.py)

    # -- instance life cycle -------------------------------------------------
    def fs_for(self, instance_id: str) -> str | None:
        # None until `labctl deploy` has recorded the stack's file system.
        return load().get("instance_fs", {}).get(instance_id)

    def ec2_client(self) -> Any:
        """An EC2 client with the lab's admin keys (lab-admin once `labctl up --iam` made it)."""
        creds = admin_credentials(load())
        if creds != self.credentials or self.ec2 is None:
            self.ec2 = boto3.client(
                "ec2", endpoint_url=self.moto_url, region_name=self.region,
                aws_access_key_id=creds["AWS_ACCESS_KEY_ID"], aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                config=Config(retries={"mode": "standard", "max_attempts": 3}),
            )
            self.credentials = creds
        return self.ec2

    def authorize(self, headers: Any, action: str, resources: list[str]) -> tuple[int, dict[str, Any]] | None:
        """Under `labctl up --iam`, the IAM check AWS makes for the SSM calls labd answers:
        the caller (by the access key in the Authorization header; the signature is not
        verified) must be allowed `action` on every resource. None when allowed."""
        state = load()
        if not state.get("iam", {}).get("enforced"):
            return None
        auth = headers.get("Authorization", "")
        key_id = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else ""
        user = lab_iam.user_for_key(state, key_id)
        if user is None:
            return 400, {"__type": "UnrecognizedClientException",
                         "message": "The security token included in the request is invalid."}
        variables = {"aws:username": user["name"], "aws:userid": user["user_id"]}
        for resource in resources:
            verdict = lab_iam.evaluate(user["policy"], action, resource, variables)
            print("iam: %s %s %s %s" % (user["name"], action, resource, verdict), flush=True)
            if verdict != "allow":
                why = "with an explicit deny in an identity-based policy" if verdict == "deny" else \
                    "because no identity-based policy allows the %s action" % action
                return 400, {"__type": "AccessDeniedException",
                             "message": "User: %s is not authorized to perform: %s on resource: %s %s"
                                        % (user["arn"], action, resource, why)}
        return None

    def arn(self, service: str, resource: str) -> str:
        account = load().get("iam", {}).get("account", "123456789012")
        return "arn:aws:%s:%s:%s:%s" % (service, self.region, account, resource)

    def caller_name(self, headers: Any) -> str:
        """AWS prefixes a session id with the caller's user name."""
        auth = headers.get("Authorization", "")
        key_id = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else ""
        user = lab_iam.user_for_key(load(), key_id)
        return user["name"] if user else "lab"

    def touch(self) -> None:
        """The lab is in use: poll often for a while, and at once if it was idle."""
        now = time.monotonic()
        if now >= self.active_until:
            self.wake.set()
        self.active_until = now + ACTIVE_SECONDS

    def fresh(self) -> None:
        """Poll now unless the answer held is from a poll begun within FRESH: what labd answers is
        never older than FRESH (a poll still in flight does not count: under load it can take
        seconds, and the answer held meanwhile is the one before it)."""
        if time.monotonic() - self.applied_poll > FRESH:
            try:
                self.poll_once()
            except Exception:  # an answer from the last poll beats none
                traceback.print_exc()

    def poll_once(self) -> None:
        started = time.monotonic()
        states: dict[str, str] = {}
        for page in self.ec2_client().get_paginator("describe_instances").paginate():
            for res in page["Reservations"]:
                for i in res["Instances"]:
                    states[i["InstanceId"]] = i["State"]["Name"]
        with self.lock:
            # the background poll and an on-demand one can overlap: an answer older than the one
            # applied is dropped, or it could say running of an instance stopped since (and boot it)
            if started < self.applied_poll:
                return
            self.applied_poll = started
            for iid, ec2_state in states.items():
                rec = self.instances.setdefault(iid, {"init_pid": None, "running_since": None, "registered": False})
                if rec.get("ec2_state") != ec2_state:
                    self.touch()
                rec["ec2_state"] = ec2_state
                alive = rec["init_pid"] is not None and inst.pid_alive(rec["init_pid"])
                if ec2_state == "running" and not alive:
                    fs_id = self.fs_for(iid)
                    if fs_id is None:
                        # Created by CloudFormation a moment ago: booting now would bake an
                        # unknown file system into mountefs.sh, so wait for the deploy to say.
                        continue
                    inst.provision(iid, fs_id)
                    rec["init_pid"] = inst.boot(iid)
                    rec["running_since"] = time.time()
                elif ec2_state != "running" and rec["init_pid"] is not None:
                    inst.halt(rec["init_pid"])
                    rec["init_pid"] = None
                    rec["running_since"] = None
                    self.end_sessions(iid)
                if rec["init_pid"] and self.online(rec):
                    if not rec["registered"]:
                        self.touch()
                    rec["registered"] = True
                    rec["last_ping"] = time.time()
                if rec["init_pid"]:
                    self.efs_watchdog(iid, rec["init_pid"])

    def efs_watchdog(self, instance_id: str, init_pid: int) -> None:
        """Like efs-utils' watchdog: drop state files of mounts that are gone."""
        state_dir = inst.instance_root(instance_id) / "run" / "efs"
        if not state_dir.is_dir():
            return
        mounted = {line.split()[4] for line in inst.mountinfo(init_pid).splitlines() if len(line.split()) > 4}
        for f in state_dir.iterdir():
            try:
                meta = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("mountpoint") and meta["mountpoint"] not in mounted:
                f.unlink(missing_ok=True)

    def online(self, rec: dict[str, Any]) -> bool:
        return bool(rec.get("init_pid")) and time.time() - (rec.get("running_since") or 0) >= self.boot_delay

    def end_sessions(self, instance_id: str) -> None:
        for sid, s in self.sessions.items():
            if s["instance_id"] == instance_id and not s["terminated"]:
                s["terminated"] = True
                account_reads(efs_reads.session_ended, sid)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.wake.clear()
            try:
                self.poll_once()
            except Exception:  # keep supervising through a moto hiccup
                traceback.print_exc()
            self.wake.wait(POLL if time.monotonic() < self.active_until else POLL_IDLE)

    def halt_all(self) -> None:
        self.stop_event.set()
        self.wake.set()
        with self.lock:
            for rec in self.instances.values():
                if rec.get("init_pid"):
                    inst.halt(rec["init_pid"])
                    rec["init_pid"] = None

    # -- SSM answers ----------------------------------------------------------
    def start_session(self, body: dict[str, Any], host: str, caller: str = "lab") -> tuple[int, dict[str, Any]]:
        target = body.get("Target", "")
        self.fresh()
        with self.lock:
            rec = self.instances.get(target)
            if not rec or not self.online(rec):
                return 400, {"__type": "TargetNotConnected", "message": "%s is not connected." % target}
            sid = "%s-%s" % (caller, secrets.token_hex(8))
            token = secrets.token_hex(16)
            self.sessions[sid] = {"instance_id": target, "token": token, "started": time.time(),
                                  "terminated": False, "user": "ssm-user", **self.limits.for_session()}
            self.sessions_started[target] = self.sessions_started.get(target, 0) + 1
        account_reads(efs_reads.session_started, sid, target)
        return 200, {"SessionId": sid, "TokenValue": token,
                     "StreamUrl": "ws://%s/v1/data-channel/%s?role=publish_subscribe" % (host, sid)}

    def terminate_session(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        sid = body.get("SessionId", "")
        with self.lock:
            if sid in self.sessions:
                self.sessions[sid]["terminated"] = True
        if sid in self.sessions:
            account_reads(efs_reads.session_ended, sid)
        return 200, {"SessionId": sid}

    def resume_session(self, body: dict[str, Any], host: str) -> tuple[int, dict[str, Any]]:
        """What the real session-manager-plugin asks after a websocket error: the same session's
        stream again. A session that ended (terminated, or ended by Session Manager) is gone."""
        sid = body.get("SessionId", "")
        with self.lock:
            s = self.sessions.get(sid)
            if not s or s["terminated"]:
                return 400, {"__type": "DoesNotExistException", "message": "Session %s does not exist." % sid}
            token = s["token"]
        return 200, {"SessionId": sid, "TokenValue": token,
                     "StreamUrl": "ws://%s/v1/data-channel/%s?role=publish_subscribe" % (host, sid)}

    def describe_instance_information(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.fresh()
        wanted: set[str] = set()
        for f in body.get("Filters", []) or []:
            if f.get("Key") == "InstanceIds":
                wanted.update(f.get("Values", []))
        for f in body.get("InstanceInformationFilterList", []) or []:
            if f.get("key") == "InstanceIds":
                wanted.update(f.get("valueSet", []))
        out = []
        with self.lock:
            for iid, rec in sorted(self.instances.items()):
                if wanted and iid not in wanted:
                    continue
                if not rec.get("registered"):
                    continue  # the agent has never checked in
                out.append({
                    "InstanceId": iid,
                    "PingStatus": "Online" if self.online(rec) else "ConnectionLost",
                    "LastPingDateTime": rec.get("last_ping", 0),
                    "AgentVersion": "3.3.0.0-lab",
                    "IsLatestVersion": True,
                    "PlatformType": "Linux",
                    "PlatformName": "Amazon Linux",
                    "PlatformVersion": "2023",
                    "ResourceType": "EC2Instance",
                    "ComputerName": "lab-%s" % iid,
                    "IPAddress": "127.0.0.1",
                })
        return 200, {"InstanceInformationList": out}

    def session_for_plugin(self, sid: str, token: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            s = self.sessions.get(sid)
            if not s or s["token"] != token:
                return 404, {"message": "no such session"}
            if s["terminated"]:
                return 409, {"message": "session %s was terminated" % sid}
            rec = self.instances.get(s["instance_id"], {})
            if not rec.get("init_pid"):
                return 409, {"message": "instance %s is not running" % s["instance_id"]}
            return 200, {"instance_id": s["instance_id"], "init_pid": rec["init_pid"], "user": s["user"],
                         "idle_timeout": s["idle_timeout"], "max_duration": s["max_duration"],
                         "cuts_armed": self.cuts.armed()}

    def session_command(self, sid: str, token: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A stand-in relays a command: end its session at it (an armed cut)?"""
        with self.lock:
            s = self.sessions.get(sid)
            if not s or s["token"] != token:
                return 404, {"message": "no such session"}
        return 200, {"cut": self.cuts.command_seen(str(doc.get("command", "")))}

    def session_report(self, sid: str, token: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The plugin stand-in tells what it saw: a module transfer, or the session it ended."""
        with self.lock:
            s = self.sessions.get(sid)
            if not s or s["token"] != token:
                return 404, {"message": "no such session"}
            if doc.get("ended"):
                s["terminated"] = True
        self.limits.report(doc)
        return 200, {}

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "aws_access_key_id": self.credentials.get("AWS_ACCESS_KEY_ID"),
                "boot_delay": self.boot_delay,
                "instances": {
                    iid: {"ec2_state": r.get("ec2_state"), "init_pid": r.get("init_pid"),
                          "online": self.online(r), "running_since": r.get("running_since")}
                    for iid, r in self.instances.items()
                },
                "sessions_started": dict(self.sessions_started),
                "sessions_open": sum(1 for s in self.sessions.values() if not s["terminated"]),
                "ssm": self.limits.status(),
                "session_cuts": self.cuts.status(),
            }


def make_handler(sup: Supervisor, moto_host: str, moto_port: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the log is for errors
            pass

        def reply(self, code: int, doc: dict[str, Any], ctype: str = "application/x-amz-json-1.1") -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", secrets.token_hex(8))
            self.end_headers()
            self.wfile.write(data)

        def body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_GET(self) -> None:
            sup.touch()
            url = urlparse(self.path)
            if url.path == "/lab/status":
                sup.fresh()
                return self.reply(200, sup.status(), "application/json")
            if url.path == "/lab/session-cuts":
                return self.reply(200, sup.cuts.status(), "application/json")
            if url.path.startswith("/lab/session/"):
                token = parse_qs(url.query).get("token", [""])[0]
                code, doc = sup.session_for_plugin(url.path.rsplit("/", 1)[1], token)
                return self.reply(code, doc, "application/json")
            return self.forward(b"")

        def do_POST(self) -> None:
            sup.touch()
            url = urlparse(self.path)
            data = self.body()
            if url.path == "/lab/ssm-limits":
                return self.reply(200, sup.limits.change(json.loads(data or b"{}")), "application/json")
            if url.path == "/lab/session-cuts":
                try:
                    return self.reply(200, sup.cuts.configure(json.loads(data or b"{}")), "application/json")
                except (ValueError, KeyError, TypeError, re.error) as exc:
                    return self.reply(400, {"message": "bad session cuts: %s" % exc}, "application/json")
            if url.path.startswith("/lab/session/") and url.path.endswith(("/report", "/command")):
                token = parse_qs(url.query).get("token", [""])[0]
                answer = sup.session_report if url.path.endswith("/report") else sup.session_command
                code, doc = answer(url.path.split("/")[3], token, json.loads(data or b"{}"))
                return self.reply(code, doc, "application/json")
            if url.path == "/lab/boot-delay":
                sup.boot_delay = float(json.loads(data or b"{}").get("seconds", sup.boot_delay))
                return self.reply(200, sup.status(), "application/json")
            target = self.headers.get("X-Amz-Target", "")
            op = target.split(".", 1)[1] if target.startswith("AmazonSSM.") else ""
            handlers = {
                "StartSession": lambda b: sup.start_session(b, self.headers.get("Host", ""),
                                                            sup.caller_name(self.headers)),
                "TerminateSession": sup.terminate_session,
                "ResumeSession": lambda b: sup.resume_session(b, self.headers.get("Host", "")),
                "DescribeInstanceInformation": sup.describe_instance_information,
            }
            if op in handlers:
                try:
                    req = json.loads(data or b"{}")
                except ValueError:
                    return self.reply(400, {"__type": "SerializationException", "message": "bad JSON"})
                denied = sup.authorize(self.headers, "ssm:" + op, self.ssm_resources(op, req))
                if denied:
                    return self.reply(*denied)
                code, doc = handlers[op](req)
                return self.reply(code, doc)
            return self.forward(data)

        @staticmethod
        def ssm_resources(op: str, req: dict[str, Any]) -> list[str]:
            """The resources AWS authorizes an SSM call on."""
            if op == "StartSession":
                document = req.get("DocumentName") or "SSM-SessionManagerRunShell"
                return [sup.arn("ec2", "instance/%s" % req.get("Target", "")), sup.arn("ssm", "document/%s" % document)]
            if op in ("TerminateSession", "ResumeSession"):
                return [sup.arn("ssm", "session/%s" % req.get("SessionId", ""))]
            return ["*"]  # DescribeInstanceInformation has no resource-level permissions

        def forward(self, data: bytes) -> None:
            """Pass the request to moto as it came (headers and signature intact)."""
            conn = http.client.HTTPConnection(moto_host, moto_port, timeout=60)
            try:
                conn.request(self.command, self.path, body=data, headers=dict(self.headers.items()))
                resp = conn.getresponse()
                payload = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--moto-port", type=int, required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--boot-delay", type=float, default=2.0)
    add_limit_arguments(ap)
    args = ap.parse_args()

    sup = Supervisor("http://127.0.0.1:%d" % args.moto_port, args.region, args.boot_delay,
                     SessionLimits(args.ssm_idle_timeout, args.ssm_max_duration))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(sup, "127.0.0.1", args.moto_port))
    server.daemon_threads = True

    def stop(*_: Any) -> None:
        sup.halt_all()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=sup.run, daemon=True).start()
    Path(lab_dir() / "labd.ready").write_text(str(os.getpid()))
    server.serve_forever(poll_interval=0.2)
    sup.halt_all()


if __name__ == "__main__":
    main()
