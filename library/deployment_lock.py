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
      - V(broken) removes the lock whoever holds it (for a run that died).
    type: str
    choices: [present, absent, broken]
    default: present
  run_id:
    description: Identifies this run. Required for V(present) and V(absent).
    type: str
  holder:
    description: Who takes the lock, shown to whoever is refused (default user@host of the controller).
    type: str
  purpose:
    description: What the run does (e.g. C(stage data/reefguide)), shown to whoever is refused.
    type: str
    default: ""
notes:
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
"""

RETURN = r"""
lock:
  description: The lock as it is after the call (empty when none is held).
  returned: always
  type: dict
  sample: {"run_id": "20261124T201500-4f2a", "holder": "alice@laptop", "since": "2026-11-24T20:15:00Z",
           "purpose": "stage data/reefguide", "pid": 4242}
previous:
  description: The lock found before the call (empty when none was held).
  returned: always
  type: dict
"""

import datetime
import getpass
import json
import os
import socket
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import (
    AWS_COMMON_ARGS,
    client_from_params,
    error_code,
    fail_aws,
    read_json_object,
    require_boto3,
)


def read_lock(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    try:
        return read_json_object(s3, bucket, key) or {}
    except ValueError:
        return {"run_id": "?", "holder": "unreadable lock object", "since": "?"}


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
        "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "purpose": p["purpose"],
        "pid": os.getppid(),
    }
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


def main() -> None:
    spec = dict(
        bucket=dict(type="str", required=True),
        key=dict(type="str", default="reefguide-efs/lock.json", no_log=False),
        state=dict(type="str", default="present", choices=["present", "absent", "broken"]),
        run_id=dict(type="str"),
        holder=dict(type="str"),
        purpose=dict(type="str", default=""),
    )
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[("state", "present", ["run_id"]), ("state", "absent", ["run_id"])])
    require_boto3(module)
    p = module.params
    s3 = client_from_params(module, "s3")
    try:
        previous = read_lock(s3, p["bucket"], p["key"])
    except Exception as exc:
        fail_aws(module, exc, "reading the lock s3://%s/%s" % (p["bucket"], p["key"]))

    if p["state"] == "present":
        take(module, s3, previous)
    if not previous:
        module.exit_json(changed=False, lock={}, previous={})
    if p["state"] == "absent" and previous.get("run_id") != p["run_id"]:
        module.warn("lock is held by %s, not by this run: left in place" % describe(previous))
        module.exit_json(changed=False, lock=previous, previous=previous)
    if not module.check_mode:
        try:
            s3.delete_object(Bucket=p["bucket"], Key=p["key"])
        except Exception as exc:
            fail_aws(module, exc, "releasing the lock s3://%s/%s" % (p["bucket"], p["key"]))
    module.exit_json(changed=True, lock={}, previous=previous)


if __name__ == "__main__":
    main()
