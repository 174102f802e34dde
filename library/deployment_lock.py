#!/usr/bin/python
# reefguide-efs: one stage or teardown run per deployment at a time.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deployment_lock
short_description: Take, release or break the per-deployment lock of reefguide-efs
description:
  - Keeps two stage or teardown runs from working on one ReefGuide deployment at once.
  - The lock is an object (C(reefguide-efs/lock.json) by default) in the deployment's transfer
    bucket, created with S3's conditional write (header C(If-None-Match) set to C(*)), so two runs racing for it
    cannot both win, whichever machine they run on.
  - A run that finds the lock held fails with the holder's name, host, run id and start time.
  - The holder refreshes the lock's C(heartbeat) while it runs (O(state=kept_alive) in the
    background, or O(state=refreshed) once). A lock whose heartbeat is younger than its C(ttl)
    belongs to a live run; O(state=broken) refuses it unless O(force=true).
  - A lock left by a run that died can be broken explicitly with O(state=broken).
  - Runs on the controller.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  bucket:
    description: The deployment's transfer bucket.
    type: str
    required: true
  key:
    description: Object key of the lock.
    type: str
    default: reefguide-efs/lock.json
  state:
    description:
      - V(present) takes the lock for O(run_id), or fails if another run holds it. Taking it again
        for the same O(run_id) changes nothing.
      - V(absent) releases the lock if O(run_id) holds it; a lock held by another run is left alone
        and reported.
      - V(broken) removes the lock of a run that died, whoever held it. It refuses a lock whose
        heartbeat is younger than the lock's C(ttl) (its holder looks alive), unless O(force=true).
        A lock without heartbeat (written before heartbeats existed) counts as stale.
      - V(refreshed) rewrites the heartbeat of the lock held by O(run_id) (and notes O(started_instance));
        fails if another run holds it or it is gone.
      - V(kept_alive) refreshes the heartbeat every O(ttl)/3 seconds while O(run_id) holds the lock
        (meant to run in the background, C(async) with C(poll=0)). Ends without error when the lock
        is no longer this run's, when the process O(watch_pid) is gone, or after O(max_seconds).
        When O(watch_pid) is gone and the lock is still this run's, it removes the heartbeat (the
        run is known dead), so V(broken) breaks the lock without waiting for the ttl.
    type: str
    choices: [present, absent, broken, refreshed, kept_alive]
    default: present
  run_id:
    description: Identifies this run. Required for V(present), V(absent), V(refreshed) and V(kept_alive).
    type: str
  holder:
    description: Who takes the lock, shown to whoever is refused (default user@host of the controller).
    type: str
  purpose:
    description: What the run does (e.g. C(stage data/reefguide)), shown to whoever is refused.
    type: str
    default: ""
  ttl:
    description:
      - Seconds after its last heartbeat at which a lock taken by V(present) counts as stale
        (stored in the lock). V(kept_alive) refreshes every O(ttl)/3 seconds.
      - V(broken) uses the ttl stored in the lock, this one only for a lock that has none.
    type: int
    default: 300
  force:
    description: With V(broken), break the lock even though its heartbeat says its holder is alive.
    type: bool
    default: false
  started_instance:
    description:
      - With V(refreshed), the instance this run started, noted in the lock. A run that breaks the
        lock (its holder died) learns it from C(previous) and stops that instance at its end (else
        the instance the dead run started stays running, and billed).
    type: str
  watch_pid:
    description: With V(kept_alive), stop refreshing as soon as this process (the controller's
      ansible-playbook) is gone, so the lock of a run killed by Ctrl-C goes stale.
    type: int
  max_seconds:
    description: With V(kept_alive), stop refreshing after this many seconds (the task's C(async) budget).
    type: int
    default: 86400
notes:
  - Heartbeat ages are measured with the clock of the controller that reads the lock; controllers
    whose clocks differ by a large part of the ttl misjudge each other.
  - Check mode reports whether the lock could be taken and changes nothing.
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Take the deployment lock
  deployment_lock:
    bucket: "{{ reefguide.bucket }}"
    run_id: "{{ reefguide_run_id }}"
    purpose: "stage data/reefguide"
  delegate_to: localhost

- name: Release it
  deployment_lock:
    bucket: "{{ reefguide.bucket }}"
    run_id: "{{ reefguide_run_id }}"
    state: absent
  delegate_to: localhost

- name: Break a lock left by a run that was killed
  deployment_lock:
    bucket: "{{ reefguide.bucket }}"
    state: broken
  delegate_to: localhost

- name: Keep the lock's heartbeat fresh while the run lives
  deployment_lock:
    bucket: "{{ reefguide.bucket }}"
    run_id: "{{ reefguide_run_id }}"
    state: kept_alive
    max_seconds: 86400
  delegate_to: localhost
  async: 86400
  poll: 0
"""

RETURN = r"""
lock:
  description: The lock as it is after the call (empty when none is held).
  returned: always
  type: dict
  sample: {"run_id": "20261124T201500-4f2a", "holder": "alice@laptop", "since": "2026-11-24T20:15:00Z",
           "purpose": "stage data/reefguide", "pid": 4242, "heartbeat": "2026-11-24T20:19:00Z", "ttl": 300}
previous:
  description: The lock found before the call (empty when none was held).
  returned: always
  type: dict
refreshes:
  description: How many times V(kept_alive) refreshed the heartbeat.
  returned: when state is kept_alive
  type: int
"""

import datetime
import getpass
import json
import os
import socket
import time
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import (
    AWS_COMMON_ARGS,
    client_from_params,
    error_code,
    fail_aws,
    read_json_object,
    require_boto3,
)
from ansible.module_utils.reefguide.controller_watch import process_alive


def read_lock(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    try:
        return read_json_object(s3, bucket, key) or {}
    except ValueError:
        return {"run_id": "?", "holder": "unreadable lock object", "since": "?"}


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def heartbeat_age(lock: dict[str, Any]) -> Optional[float]:
    """Seconds since the lock's last heartbeat; None when it has none (or none readable)."""
    try:
        beat = datetime.datetime.strptime(lock["heartbeat"], "%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, TypeError, ValueError):
        return None
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return max(0.0, (now - beat).total_seconds())


def describe(lock: dict[str, Any]) -> str:
    return "run %s by %s since %s%s" % (
        lock.get("run_id"), lock.get("holder"), lock.get("since"),
        (" (%s)" % lock["purpose"]) if lock.get("purpose") else "",
    )


def take(module: AnsibleModule, s3: Any, previous: dict[str, Any]) -> None:
    p = module.params
    if previous and previous.get("run_id") == p["run_id"]:
        module.exit_json(changed=False, lock=previous, previous=previous)
    if previous:
        module.fail_json(
            msg="deployment is locked by %s. Wait for that run to finish; if it died, break the lock "
                "with: ansible-playbook teardown.yml -e break_lock=true (or deployment_lock state=broken)"
                % describe(previous),
            lock=previous, previous=previous)
    lock = {
        "run_id": p["run_id"],
        "holder": p["holder"] or "%s@%s" % (getpass.getuser(), socket.gethostname()),
        "since": utc_now(),
        "purpose": p["purpose"],
        "pid": os.getppid(),
        "ttl": p["ttl"],
    }
    lock["heartbeat"] = lock["since"]
    if module.check_mode:
        module.exit_json(changed=True, lock=lock, previous=previous)
    try:
        s3.put_object(Bucket=p["bucket"], Key=p["key"], Body=json.dumps(lock).encode(),
                      IfNoneMatch="*", ServerSideEncryption="AES256", ContentType="application/json")
    except Exception as exc:
        if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            winner = read_lock(s3, p["bucket"], p["key"])
            if winner and winner.get("run_id") == p["run_id"]:
                # our own write: it was applied but its answer was lost, and the retry met it
                module.exit_json(changed=True, lock=winner, previous=previous)
            module.fail_json(msg="deployment is locked by %s (taken just now)" % describe(winner),
                             lock=winner, previous=previous)
        fail_aws(module, exc, "taking the lock s3://%s/%s" % (p["bucket"], p["key"]))
    module.exit_json(changed=True, lock=lock, previous=previous)


def delete_lock(module: AnsibleModule, s3: Any, previous: dict[str, Any], doing: str) -> None:
    p = module.params
    if not module.check_mode:
        try:
            s3.delete_object(Bucket=p["bucket"], Key=p["key"])
        except Exception as exc:
            fail_aws(module, exc, "%s the lock s3://%s/%s" % (doing, p["bucket"], p["key"]))
    module.exit_json(changed=True, lock={}, previous=previous)


def break_lock(module: AnsibleModule, s3: Any, previous: dict[str, Any]) -> None:
    p = module.params
    age = heartbeat_age(previous)
    try:
        ttl = int(previous.get("ttl") or p["ttl"])
    except (TypeError, ValueError):
        ttl = p["ttl"]
    if age is not None and age < ttl and not p["force"]:
        module.fail_json(
            msg="not breaking the lock: %s is alive by its heartbeat, last refreshed %d s ago (it counts "
                "as dead %d s after its last heartbeat). If you are sure that run is dead, wait %d s (until "
                "its heartbeat is %d s old) and retry, or break it anyway with -e break_lock=force"
                % (describe(previous), age, ttl, int(ttl - age) + 1, ttl),
            lock=previous, previous=previous)
    delete_lock(module, s3, previous, "breaking")


def refresh(s3: Any, bucket: str, key: str, run_id: str,
            extra: Optional[dict[str, Any]] = None) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """Rewrite the heartbeat if run_id holds the lock: (refreshed, lock now, lock before).
    The write is conditional on the object read (If-Match), so a lock released or taken over
    in between is never brought back or overwritten."""
    try:
        got = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return False, {}, {}
        raise
    try:
        before = json.loads(got["Body"].read())
    except ValueError:
        before = {"run_id": "?", "holder": "unreadable lock object", "since": "?"}
    if before.get("run_id") != run_id:
        return False, before, before
    lock = dict(before, heartbeat=utc_now(), **(extra or {}))
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(lock).encode(), IfMatch=got["ETag"],
                      ServerSideEncryption="AES256", ContentType="application/json")
    except Exception as exc:
        if error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict", "412", "NoSuchKey", "404"):
            raise
        # changed under us, or our own write whose answer was lost: what is there now decides
        now = read_lock(s3, bucket, key)
        return now.get("run_id") == run_id, now, before
    return True, lock, before


def orphan(s3: Any, bucket: str, key: str, run_id: str, pid: int) -> dict[str, Any]:
    """The run's ansible-playbook process ended without releasing its lock (Ctrl-C): drop the
    heartbeat, so break_lock=true can break the lock at once instead of after the ttl."""
    try:
        got = s3.get_object(Bucket=bucket, Key=key)
        lock = json.loads(got["Body"].read())
    except Exception:
        return {}
    if lock.get("run_id") != run_id:
        return lock
    lock.pop("heartbeat", None)
    lock["ended"] = "%s: its ansible-playbook process (pid %s) ended without releasing the lock" % (utc_now(), pid)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(lock).encode(), IfMatch=got["ETag"],
                  ServerSideEncryption="AES256", ContentType="application/json")
    return lock


def refreshed(module: AnsibleModule, s3: Any) -> None:
    p = module.params
    if module.check_mode:
        previous = read_lock(s3, p["bucket"], p["key"])
        ours = previous.get("run_id") == p["run_id"]
        done, lock = ours, previous
    else:
        try:
            extra = {"started_instance": p["started_instance"]} if p["started_instance"] else None
            done, lock, previous = refresh(s3, p["bucket"], p["key"], p["run_id"], extra)
        except Exception as exc:
            fail_aws(module, exc, "refreshing the lock s3://%s/%s" % (p["bucket"], p["key"]))
    if not done and not lock:
        module.fail_json(msg="no lock to refresh for run %s: it was released or broken (by break_lock?)"
                         % p["run_id"], lock={}, previous=previous)
    if not done:
        module.fail_json(msg="cannot refresh the lock of run %s: it is held by %s"
                         % (p["run_id"], describe(lock)), lock=lock, previous=previous)
    module.exit_json(changed=True, lock=lock, previous=previous)


def kept_alive(module: AnsibleModule, s3: Any, previous: dict[str, Any]) -> None:
    """Refresh every ttl/3 s until the lock is not ours, the watched process is gone, or max_seconds."""
    p = module.params
    interval = max(1.0, p["ttl"] / 3.0)
    start = time.monotonic()
    deadline = start + p["max_seconds"]
    refreshes, lock, errors = 0, previous, []  # type: int, dict[str, Any], list[str]
    if module.check_mode:
        module.exit_json(changed=False, lock=previous, previous=previous, refreshes=0, msg="check mode")
    next_at = start + interval
    while True:
        if not process_alive(p["watch_pid"]):
            try:
                lock = orphan(s3, p["bucket"], p["key"], p["run_id"], p["watch_pid"])
            except Exception as exc:
                errors.append(str(exc))
            module.exit_json(changed=True, lock=lock, previous=previous, refreshes=refreshes,
                             msg="stopped: the run (pid %s) is gone" % p["watch_pid"], errors=errors[-5:])
        now = time.monotonic()
        if now >= deadline:
            module.exit_json(changed=refreshes > 0, lock=lock, previous=previous, refreshes=refreshes,
                             msg="stopped after max_seconds (%d s)" % p["max_seconds"], errors=errors[-5:])
        if now >= next_at:
            next_at = now + interval
            try:
                done, lock, _ = refresh(s3, p["bucket"], p["key"], p["run_id"])
                refreshes += 1 if done else 0
            except Exception as exc:  # a passing S3 error: try again at the next period
                errors.append(str(exc))
                done = True
            if not done:
                module.exit_json(changed=refreshes > 0, lock=lock, previous=previous, refreshes=refreshes,
                                 msg="stopped: the lock is no longer held by run %s" % p["run_id"],
                                 errors=errors[-5:])
        time.sleep(max(0.0, min(1.0, next_at - time.monotonic(), deadline - time.monotonic())))


def main() -> None:
    spec = dict(
        bucket=dict(type="str", required=True),
        key=dict(type="str", default="reefguide-efs/lock.json", no_log=False),
        state=dict(type="str", default="present",
                   choices=["present", "absent", "broken", "refreshed", "kept_alive"]),
        run_id=dict(type="str"),
        holder=dict(type="str"),
        purpose=dict(type="str", default=""),
        ttl=dict(type="int", default=300),
        force=dict(type="bool", default=False),
        watch_pid=dict(type="int"),
        started_instance=dict(type="str"),
        max_seconds=dict(type="int", default=86400),
    )
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[("state", "present", ["run_id"]), ("state", "absent", ["run_id"]),
                                        ("state", "refreshed", ["run_id"]), ("state", "kept_alive", ["run_id"])])
    require_boto3(module)
    p = module.params
    s3 = client_from_params(module, "s3")
    try:
        previous = read_lock(s3, p["bucket"], p["key"])
    except Exception as exc:
        fail_aws(module, exc, "reading the lock s3://%s/%s" % (p["bucket"], p["key"]))

    if p["ttl"] < 1 or p["max_seconds"] < 0:
        module.fail_json(msg="ttl must be at least 1 s and max_seconds not negative")
    if p["state"] == "present":
        take(module, s3, previous)
    if p["state"] == "refreshed":
        refreshed(module, s3)
    if p["state"] == "kept_alive":
        kept_alive(module, s3, previous)
    if not previous:
        module.exit_json(changed=False, lock={}, previous={})
    if p["state"] == "absent" and previous.get("run_id") != p["run_id"]:
        module.warn("lock is held by %s, not by this run: left in place" % describe(previous))
        module.exit_json(changed=False, lock=previous, previous=previous)
    if p["state"] == "broken":
        break_lock(module, s3, previous)
    delete_lock(module, s3, previous, "releasing")


if __name__ == "__main__":
    main()
