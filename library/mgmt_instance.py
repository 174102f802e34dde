#!/usr/bin/python
# reefguide-efs: the management instance's power state. It is never terminated.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mgmt_instance
short_description: Start or stop a ReefGuide management instance (never terminate it)
description:
  - V(running) starts a stopped instance, waits through C(pending), then waits until SSM reports
    the instance C(Online) (so an SSM session can be opened). From C(stopping) it first waits for
    C(stopped). V(stopped) stops the instance and waits for C(stopped).
  - The instance is never terminated; a C(terminated) or C(shutting-down) instance is refused.
  - With O(wait=false) it returns as soon as EC2 has the request; a stage asks for the start, uploads
    while the instance boots, then waits with a second call (the defaults).
  - Returns the state before and after and whether this call started or stopped it, so a play can
    put back the state it found.
  - Runs on the controller.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  instance_id:
    description: The management instance (from deployment_info).
    type: str
    required: true
  state:
    description: V(running) or V(stopped).
    type: str
    choices: [running, stopped]
    default: running
  wait:
    description: >-
      Wait for the state asked for (C(running), and Online in SSM with O(wait_online)). V(false)
      returns once EC2 has the request (from C(stopping), once it is C(stopped) and the start is
      asked), with RV(state_after) the state EC2 reports then.
    type: bool
    default: true
  wait_online:
    description: With V(running), also wait until SSM reports the instance Online.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for C(running) or C(stopped).
    type: int
    default: 600
  online_timeout:
    description: Seconds to wait, once running, for SSM to report the instance Online.
    type: int
    default: 300
  poll_interval:
    description: Seconds between state checks.
    type: float
    default: 2
notes:
  - Check mode reports what would be done (C(changed) true if the instance would be started or
    stopped) and calls neither StartInstances nor StopInstances.
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Start the management instance and wait for SSM
  mgmt_instance:
    instance_id: "{{ deployment.instance_id }}"
    state: running
  delegate_to: localhost
  register: power

- name: Stop it again if this play started it
  mgmt_instance:
    instance_id: "{{ deployment.instance_id }}"
    state: stopped
  delegate_to: localhost
  when: power.started_by_this_call
"""

RETURN = r"""
started_at:
  description: When the call began, in seconds since the epoch (the stage summary's timeline).
  returned: success
  type: float
ended_at:
  description: When the call ended, in seconds since the epoch.
  returned: success
  type: float
state_before:
  description: EC2 state when the call began.
  returned: always
  type: str
  sample: stopped
state_after:
  description: EC2 state when the call ended (the predicted one in check mode).
  returned: always
  type: str
started_by_this_call:
  description: >-
    Whether this call started the instance. (Not named C(started): async_status reads that key as
    "still running" when the module is run async.)
  returned: always
  type: bool
stopped_by_this_call:
  description: Whether this call stopped the instance.
  returned: always
  type: bool
ping_status:
  description: SSM PingStatus at the end (null if not asked or not registered).
  returned: always
  type: str
seconds:
  description: Seconds spent waiting.
  returned: always
  type: float
"""

import time
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import AWS_COMMON_ARGS, client_from_params, error_code, fail_aws, require_boto3

REFUSED = ("terminated", "shutting-down")


class Power:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.p = module.params
        self.iid = self.p["instance_id"]
        self.ec2 = client_from_params(module, "ec2")
        self.ssm = client_from_params(module, "ssm")
        self.t0 = time.time()

    def state(self) -> str:
        try:
            res = self.ec2.describe_instances(InstanceIds=[self.iid])
        except Exception as exc:
            if error_code(exc) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                self.module.fail_json(msg="instance %s does not exist in this account/region: check the stack "
                                          "name and region (the stack output names its instance)" % self.iid,
                                      error_code=error_code(exc))
            fail_aws(self.module, exc, "reading the state of instance %s" % self.iid)
        instances = [i for r in res["Reservations"] for i in r["Instances"]]
        if not instances:
            self.module.fail_json(msg="instance %s was not found: check the stack name and region" % self.iid)
        return instances[0]["State"]["Name"]

    def wait_for(self, wanted: str) -> str:
        deadline = self.t0 + self.p["wait_timeout"]
        while True:
            current = self.state()
            if current == wanted:
                return current
            if current in REFUSED:
                self.module.fail_json(msg="instance %s went %s while waiting for %s" % (self.iid, current, wanted))
            if time.time() > deadline:
                self.module.fail_json(msg="instance %s is still %s after %d s (wanted %s): check it in the EC2 "
                                          "console" % (self.iid, current, self.p["wait_timeout"], wanted))
            time.sleep(self.p["poll_interval"])

    def ping(self) -> Optional[str]:
        try:
            info = self.ssm.describe_instance_information(
                Filters=[{"Key": "InstanceIds", "Values": [self.iid]}])["InstanceInformationList"]
        except Exception as exc:
            fail_aws(self.module, exc, "asking SSM about instance %s" % self.iid)
        return info[0].get("PingStatus") if info else None

    def wait_online(self) -> Optional[str]:
        deadline = time.time() + self.p["online_timeout"]
        while True:
            status = self.ping()
            if status == "Online":
                return status
            if time.time() > deadline:
                self.module.fail_json(
                    msg="instance %s is running but SSM never reported it Online within %d s (last: %s): check the "
                        "SSM agent, the instance role (AmazonSSMManagedInstanceCore) and its outbound HTTPS"
                        % (self.iid, self.p["online_timeout"], status or "not registered"),
                    state_after="running", ping_status=status)
            time.sleep(self.p["poll_interval"])

    def call(self, action: str) -> None:
        try:
            if action == "start":
                self.ec2.start_instances(InstanceIds=[self.iid])
            else:
                self.ec2.stop_instances(InstanceIds=[self.iid])
        except Exception as exc:
            fail_aws(self.module, exc, "%s instance %s" % ("starting" if action == "start" else "stopping", self.iid))


def main() -> None:
    spec = dict(
        instance_id=dict(type="str", required=True),
        state=dict(type="str", default="running", choices=["running", "stopped"]),
        wait=dict(type="bool", default=True),
        wait_online=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=600),
        online_timeout=dict(type="int", default=300),
        poll_interval=dict(type="float", default=2),
    )
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_boto3(module)
    power = Power(module)
    want = module.params["state"]
    before = power.state()
    if before in REFUSED:
        module.fail_json(msg="instance %s is %s: reefguide-efs never terminates an instance and cannot use this one; "
                             "the stack needs a new management instance (redeploy it)" % (power.iid, before),
                         state_before=before)
    result: dict[str, Any] = dict(state_before=before, started_by_this_call=False, stopped_by_this_call=False,
                                  ping_status=None, started_at=power.t0)

    def done(changed: bool, state_after: str, seconds: float) -> None:
        module.exit_json(changed=changed, state_after=state_after, seconds=seconds, ended_at=time.time(), **result)

    if want == "running":
        needs_start = before in ("stopped", "stopping")
        if module.check_mode:
            done(needs_start, "running", 0.0)
        if before == "stopping":
            power.wait_for("stopped")
        if needs_start:
            power.call("start")
            result["started_by_this_call"] = True
        if module.params["wait"]:
            after = power.wait_for("running")
            if module.params["wait_online"]:
                result["ping_status"] = power.wait_online()
        else:
            after = power.state()  # EC2 has the request; a later call waits
        done(needs_start, after, round(time.time() - power.t0, 1))

    needs_stop = before in ("running", "pending")
    if module.check_mode:
        done(needs_stop, "stopped", 0.0)
    if before == "pending":
        power.wait_for("running")
    if needs_stop:
        power.call("stop")
        result["stopped_by_this_call"] = True
    after = power.wait_for("stopped") if module.params["wait"] else power.state()
    done(needs_stop, after, round(time.time() - power.t0, 1))


if __name__ == "__main__":
    main()
