#!/usr/bin/env python3
"""Print a JSON snapshot of what a run could change: every path on the lab's EFS
(with size and SHA-256), every object in the transfer bucket, the instance state.
Used by the check scenario to prove --check changes nothing."""

import hashlib
import json
import os
import subprocess
import sys

import boto3

labctl = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "lab", "labctl")
status = json.loads(subprocess.check_output([labctl, "status"]))
stack = status["stacks"][os.environ.get("REEFGUIDE_LAB_STACK", "reefguide-lab")]
efs = subprocess.check_output([labctl, "efs-path"], text=True).strip()
tree = {}
for dirpath, dirnames, filenames in os.walk(efs):
    for name in dirnames + filenames:
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, efs)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as fh:
                tree[rel] = hashlib.sha256(fh.read()).hexdigest()
        else:
            tree[rel] = "dir" if os.path.isdir(path) else "link:" + os.readlink(path)
s3 = boto3.client("s3")
objects = sorted(o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack["bucket"])
                 for o in page.get("Contents", []))
json.dump({"efs": tree, "objects": objects,
           "instance": status["instances"][stack["instance_id"]]["ec2_state"]}, sys.stdout, indent=1, sort_keys=True)
