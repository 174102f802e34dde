"""The lab behaves like the real deployment where reefguide-efs depends on it."""

from __future__ import annotations

import json
import os
import time

import pytest
from botocore.exceptions import ClientError

from lab import Lab


def online_ids(lab: Lab) -> dict[str, str]:
    ssm = lab.client("ssm")
    info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [lab.instance_id]}])
    return {i["InstanceId"]: i["PingStatus"] for i in info["InstanceInformationList"]}


def test_stack_output_follows_the_slug_rule(lab: Lab) -> None:
    cf = lab.client("cloudformation")
    stack = cf.describe_stacks(StackName=lab.stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert list(outputs) == ["reefguidelabefnConnectionInfo"]
    info = json.loads(outputs["reefguidelabefnConnectionInfo"])
    assert info == {"serviceInstanceId": lab.instance_id, "transferBucketName": lab.bucket}
    efs = [r for r in cf.describe_stack_resources(StackName=lab.stack_name)["StackResources"]
           if r["ResourceType"] == "AWS::EFS::FileSystem"]
    assert [r["PhysicalResourceId"] for r in efs] == [lab.fs_id]


def test_second_stack_with_digit_name_gets_n_prefixed_key(lab: Lab) -> None:
    doc = json.loads(lab.ctl("deploy", "--stack-name", "42-Reef_Guide").stdout)
    assert doc["output_key"] == "n42reefguideefnConnectionInfo"
    cf = lab.client("cloudformation")
    outputs = cf.describe_stacks(StackName="42-Reef_Guide")["Stacks"][0]["Outputs"]
    assert outputs[0]["OutputKey"] == "n42reefguideefnConnectionInfo"
    # deployed stopped, like the real management instance between uses
    ec2 = lab.client("ec2")
    state = ec2.describe_instances(InstanceIds=[doc["instance_id"]])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "stopped"


def test_transfer_bucket_is_encrypted(lab: Lab) -> None:
    enc = lab.client("s3").get_bucket_encryption(Bucket=lab.bucket)
    rule = enc["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_stopped_instance_refuses_sessions_and_is_not_online(lab: Lab) -> None:
    lab.stop_instance()
    with pytest.raises(ClientError) as err:
        lab.client("ssm").start_session(Target=lab.instance_id)
    assert err.value.response["Error"]["Code"] == "TargetNotConnected"
    assert online_ids(lab).get(lab.instance_id) != "Online"


def test_online_only_after_boot_delay(lab: Lab) -> None:
    lab.stop_instance()
    lab.set_boot_delay(6)
    try:
        lab.start_instance(wait_online=False)
        assert online_ids(lab).get(lab.instance_id) != "Online"
        with pytest.raises(ClientError) as err:
            lab.client("ssm").start_session(Target=lab.instance_id)
        assert err.value.response["Error"]["Code"] == "TargetNotConnected"
        deadline = time.time() + 30
        while online_ids(lab).get(lab.instance_id) != "Online":
            assert time.time() < deadline, "never came Online"
            time.sleep(0.2)
        sid = lab.client("ssm").start_session(Target=lab.instance_id)["SessionId"]
        lab.client("ssm").terminate_session(SessionId=sid)
    finally:
        lab.set_boot_delay(1)


def test_other_ssm_calls_reach_moto(lab: Lab) -> None:
    ssm = lab.client("ssm")
    ssm.put_parameter(Name="/reefguide/lab-probe", Value="x", Type="String", Overwrite=True)
    assert ssm.get_parameter(Name="/reefguide/lab-probe")["Parameter"]["Value"] == "x"


def test_aws_ssm_plugin_ping_become_and_copy(lab: Lab, tmp_path) -> None:
    lab.start_instance()
    inv = lab.inventory(tmp_path / "inv.json")
    before = lab.sessions_started()

    ping = lab.ansible(inv, "ping")
    assert ping.returncode == 0 and '"ping": "pong"' in ping.stdout, ping.stdout + ping.stderr

    who = lab.ansible(inv, "command", "id -un")
    assert who.stdout.strip().endswith(">>\nssm-user"), who.stdout
    root = lab.ansible(inv, "command", "id -un", become=True)
    assert root.stdout.strip().endswith(">>\nroot"), root.stdout

    src = tmp_path / "it's a $(file) `x`.txt"
    src.write_bytes(b"bytes \xe2\x9c\x93 'quoted'\n")
    copy = lab.ansible(inv, "copy", json.dumps({"src": str(src), "dest": "/tmp/copied.txt"}))
    assert copy.returncode == 0, copy.stdout + copy.stderr
    inside = lab.instance_exec(["cat", "/tmp/copied.txt"])
    assert inside.stdout.encode() == src.read_bytes()
    assert not os.path.exists("/tmp/copied.txt"), "the instance's /tmp must not be the host's"
    # the plugin opens one SSM session per task
    assert lab.sessions_started() - before == 4


def test_mount_persists_across_sessions_and_is_invisible_on_host(lab: Lab, tmp_path) -> None:
    lab.start_instance()
    inv = lab.inventory(tmp_path / "inv.json")
    # ec2-user's home is private (0700) as on Amazon Linux: the operator's sudo
    mount = lab.ansible(inv, "command", "sh /home/ec2-user/mountefs.sh", become=True)
    assert mount.returncode == 0, mount.stdout + mount.stderr
    listing = lab.ansible(inv, "command", "ls /home/ec2-user/efs/data/reefguide", become=True)
    assert "cache" in listing.stdout, listing.stdout
    findmnt = lab.ansible(inv, "command", "findmnt -n -o TARGET /home/ec2-user/efs")
    assert "/home/ec2-user/efs" in findmnt.stdout
    with open("/proc/self/mountinfo") as fh:
        # the one lab mount on the host is the storage's own noatime guard (lab/reefguide_lab/efs_reads.py)
        leaked = [line for line in fh if str(lab.dir) in line and line.split()[4] != str(lab.dir / "efs")]
    assert leaked == [], "an instance mount leaked to the host"
    assert not os.path.exists("/home/ec2-user/mountefs.sh")


def test_unknown_file_system_fails_like_efs_utils(lab: Lab) -> None:
    lab.start_instance()
    lab.instance_exec(["mkdir", "-p", "/mnt/other"])
    res = lab.instance_exec(["mount", "-t", "efs", "-o", "tls,iam", "fs-00000000", "/mnt/other"])
    assert res.returncode != 0
    assert "Failed to resolve" in res.stderr and "fs-00000000" in res.stderr


def test_stop_removes_mounts_but_keeps_efs_data(lab: Lab) -> None:
    lab.start_instance()
    lab.instance_exec(["sh", "/home/ec2-user/mountefs.sh"], check=True)
    lab.instance_exec(["sh", "-c", "echo kept > /home/ec2-user/efs/data/reefguide/probe.txt"], check=True)
    state_files = lab.instance_exec(["ls", "/var/run/efs"]).stdout.split()
    assert any(f.startswith(lab.fs_id + ".home.ec2-user.efs.") for f in state_files), state_files
    lab.stop_instance()
    lab.start_instance()
    mounted = lab.instance_exec(["findmnt", "/home/ec2-user/efs"])
    assert mounted.returncode != 0, "mount survived a stop"
    assert lab.instance_exec(["ls", "-A", "/home/ec2-user/efs"]).stdout == ""
    # the file system kept its data; the instance's root disk kept mountefs.sh
    assert (lab.efs_path / "data" / "reefguide" / "probe.txt").read_text() == "kept\n"
    assert lab.instance_exec(["test", "-x", "/home/ec2-user/mountefs.sh"]).returncode == 0
    assert lab.instance_exec(["ls", "/var/run/efs"]).stdout.split() == []


def test_down_leaves_no_process_and_no_mount(tmp_path) -> None:
    own = Lab(tmp_path / "lab2").up("--boot-delay", "0")
    own.start_instance()
    own.instance_exec(["sh", "/home/ec2-user/mountefs.sh"], check=True)
    pids = [own.state["moto_pid"], own.state["labd_pid"], own.init_pid()]
    down = own.down()
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"
    leftover = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = open("/proc/%s/cmdline" % entry, "rb").read()
            except OSError:
                continue
            if str(own.dir).encode() in cmd:
                leftover.append(entry)
    assert leftover == []
    with open("/proc/self/mountinfo") as fh:
        assert str(own.dir) not in fh.read()
    assert not own.dir.exists()
