"""deployment_info finds the instance, bucket and EFS from the stack name, or says what is wrong."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.reefguide.stack import slug

from helpers import run_module
from lab import Lab


@pytest.mark.parametrize("name, expected", [
    ("reefguide-lab", "reefguidelab"),
    ("ReefGuide-Prod", "reefguideprod"),
    ("123abc", "n123abc"),
    ("---", "empty"),
    ("", "empty"),
    ("Récif_2025", "rcif2025"),
])
def test_slug_rule(name: str, expected: str) -> None:
    assert slug(name) == expected


def test_discovers_the_lab_stack(lab: Lab) -> None:
    res = run_module("deployment_info", {"stack_name": lab.stack_name}, env=lab.env)
    assert not res.get("failed"), res
    assert (res["instance_id"], res["bucket"], res["efs_id"]) == (lab.instance_id, lab.bucket, lab.fs_id)
    assert res["output_key"] == "reefguidelabefnConnectionInfo" and res["stack_status"] == "CREATE_COMPLETE"
    assert res["changed"] is False
    override = run_module("deployment_info", {"stack_name": lab.stack_name, "efs_id": "fs-0123abcd"}, env=lab.env)
    assert override["efs_id"] == "fs-0123abcd"


def test_wrong_stack_name_says_so_and_lists_stacks(lab: Lab) -> None:
    res = run_module("deployment_info", {"stack_name": "reefguide-prdo"}, env=lab.env)
    assert res.get("failed") and "does not exist" in res["msg"] and lab.stack_name in res["msg"]


def broken_stack(lab: Lab, name: str, outputs: str, resources: str = "") -> None:
    body = ("Resources:\n  Bucket:\n    Type: AWS::S3::Bucket\n" + resources
            + ("Outputs:\n" + outputs if outputs else ""))
    lab.client("cloudformation").create_stack(StackName=name, TemplateBody=body)


def test_missing_output_lists_the_outputs_that_exist(lab: Lab) -> None:
    broken_stack(lab, "not-reefguide", "  Something:\n    Value: x\n")
    res = run_module("deployment_info", {"stack_name": "not-reefguide"}, env=lab.env)
    assert res.get("failed") and "notreefguideefnConnectionInfo" in res["msg"] and "Something" in res["msg"]


def test_malformed_json_and_missing_file_system(lab: Lab) -> None:
    broken_stack(lab, "bad-json", "  badjsonefnConnectionInfo:\n    Value: '{not json'\n")
    res = run_module("deployment_info", {"stack_name": "bad-json"}, env=lab.env)
    assert res.get("failed") and "not JSON" in res["msg"] and "{not json" in res["msg"]
    value = json.dumps({"serviceInstanceId": "i-1", "transferBucketName": "b"})
    broken_stack(lab, "no-efs", "  noefsefnConnectionInfo:\n    Value: '%s'\n" % value)
    res = run_module("deployment_info", {"stack_name": "no-efs"}, env=lab.env)
    assert res.get("failed") and "no EFS file systems" in res["msg"] and "efs_id" in res["msg"]
