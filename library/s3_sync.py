#!/usr/bin/python
# -*- coding: utf-8 -*-
# Ansible module: incremental, verified sync between a local directory and
# s3://bucket/prefix, in either direction. The engine is
# module_utils/reefguide/sync.py and its siblings; this file maps parameters and results.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: s3_sync
short_description: Sync a local directory with an S3 prefix, incrementally and verified
description:
  - Copies a local directory (or one file) to C(s3://bucket/prefix) (I(direction=push)) or an S3 prefix
    to a local directory (I(direction=pull)). Runs on the controller to upload and on the management
    instance to fill EFS.
  - Incremental. A file whose size and SHA-256 match the other side is not transferred. Every object
    pushed carries its SHA-256 in its metadata (C(x-amz-meta-sha256)), and the prefix holds a manifest
    (C(<prefix>/.reefguide-manifest.json)) listing path, size, SHA-256 and ETag of every object, so an
    unchanged tree re-syncs with one listing and one manifest read, without one request per object.
    Local SHA-256s are kept in a checksum cache keyed by size, modification time, inode and change time,
    so unchanged local files are not read again.
  - A pulled file is written to a temporary name in its own directory
    (C(.<name>.reefguide-tmp-<run id>)), its SHA-256 checked while it streams, and only then renamed
    into place, so no reader ever sees a partial file. An interrupted pull leaves only such temporaries;
    the next run removes them and transfers what is still missing.
  - Every key and path is checked. A key with C(..), an absolute key, or a key that would be written
    through a symlink in the destination is refused before anything is written. In a push source, a
    symlink whose target lies inside the source is followed; one pointing outside is an error. Names
    with spaces, quotes, newlines, leading dashes or non-ASCII characters are kept byte for byte.
  - Transfers run in parallel (I(concurrency)); files larger than I(part_size) move as multipart
    uploads or parallel ranged downloads, with memory bounded by the number of workers, not by file size.
  - Check mode returns the plan (what would be transferred, deleted and skipped) and changes nothing.
    With C(--diff) the first entries of each list are shown.
  - The transfers speak the S3 REST API directly over keep-alive connections (one per worker) with
    their own Signature V4 signing; boto3/botocore provide the credentials (profiles, SSO, instance role),
    region and endpoint settings.
version_added: "1.0.0"
author:
  - reefguide-efs contributors
options:
  require_mount:
    description:
      - A mount point (EFS's, on the instance) that must still be mounted, or nothing is done. The
        efs_session action sets it for the pull, so a pull never writes onto the instance's own disk
        under an empty mount point.
    type: path
  watch_pid:
    description:
      - The controller's C(ansible-playbook) process. Once it has ended (killed outright, SIGKILL),
        the sync stops as on SIGTERM within a second, sending nothing more and aborting its
        multipart uploads, instead of carrying on alone to its end.
    type: int
  direction:
    description:
      - C(push) copies I(path) to the bucket, C(pull) copies the bucket to I(path).
    type: str
    required: true
    choices: [push, pull]
  bucket:
    description:
      - Name of the bucket, usually the deployment's transfer bucket (see the C(deployment_info) module).
    type: str
    required: true
  prefix:
    description:
      - Key prefix in the bucket, without a leading or trailing C(/). Empty for the whole bucket.
      - Only keys below C(<prefix>/) are read, written or deleted.
    type: str
    default: ""
  path:
    description:
      - The local side. For I(direction=push), a directory (or a single file, stored as
        C(<prefix>/<file name>)) that must exist.
      - For I(direction=pull), the destination directory; created with its parents when missing.
    type: path
    required: true
  mode:
    description:
      - C(merge) adds and updates files and never deletes.
      - C(mirror) also deletes what the source lacks, only inside the destination (below C(<prefix>/)
        on push, below I(path) on pull); excluded paths are never deleted.
    type: str
    choices: [merge, mirror]
    default: merge
  exclude:
    description:
      - Glob patterns (C(fnmatch)) of relative paths neither transferred nor deleted, on either side.
        A pattern matching a directory excludes everything below it (for example C(cache)).
    type: list
    elements: str
    default: []
  efs_root:
    description:
      - On a pull, the EFS root I(path) lies in. Targets below I(path) with releases of their own (in
        C(<efs_root>/.reefguide-releases), e.g. a data package staged on its own below
        C(data/reefguide)) are left exactly as they are, C(mode=mirror) included, and a source
        holding anything inside one is refused before anything changes.
    type: path
  concurrency:
    description:
      - Number of parallel transfers (and of connections to S3).
    type: int
    default: 16
  part_size:
    description:
      - Files larger than this move in parts of this size (multipart upload, ranged downloads).
        Bytes, or a number with a binary unit such as C(16MiB) or C(64M).
        From C(5MiB) to C(5GiB), what S3 allows for a part.
    type: str
    default: 16MiB
  sse:
    description:
      - Server-side encryption requested for every object pushed. C(none) sends no encryption
        header (the bucket's default encryption still applies).
    type: str
    choices: [AES256, "aws:kms", none]
    default: AES256
  sse_kms_key_id:
    description:
      - KMS key for I(sse=aws:kms); the bucket's default key when omitted.
    type: str
  max_delete:
    description:
      - With I(mode=mirror), fail before changing anything if more than this many entries would be
        deleted. A guard against a wrong I(path) or I(prefix). C(-1) means no limit.
    type: int
    default: -1
  checksum_cache:
    description:
      - File holding the SHA-256s of local files between runs. Default
        C(~/.cache/reefguide-efs/checksums/<hash of path>.json) of the user the module runs as.
      - An entry holds while the file's size, mtime and inode are unchanged, and, for a push, its
        ctime too. A pull leaves ctime out because a hard-link copy of the destination (the stage's
        staging copy) changes every file's ctime; the edit a pull then misses is one in place that keeps
        the size and sets the mtime back to the nanosecond (use I(rehash) after one).
    type: path
  rehash:
    description:
      - Ignore the checksum cache and read every local file again (the cache is rewritten).
    type: bool
    default: false
  progress_file:
    description:
      - While the sync runs, write its progress as JSON to this file every I(progress_interval)
        seconds (phase, files and bytes done and total, throughput, ETA), so a play that runs the task
        with C(async) can report it. Not written in check mode.
    type: path
  progress_interval:
    description:
      - Seconds between two writes of I(progress_file).
    type: float
    default: 2.0
  list_limit:
    description:
      - How many paths of each list (transfer, delete) the result and the diff show.
    type: int
    default: 20
  region:
    description:
      - AWS region. Defaults to the profile's or environment's region. A bucket in another region is
        followed automatically on AWS endpoints.
    type: str
    aliases: [aws_region]
  profile:
    description:
      - AWS profile to take credentials and region from.
    type: str
    aliases: [aws_profile]
  endpoint_url:
    description:
      - S3 endpoint URL (for the lab or an S3-compatible store); also read from C(AWS_ENDPOINT_URL_S3)
        and C(AWS_ENDPOINT_URL). Path-style addressing is used with a custom endpoint.
    type: str
    aliases: [aws_endpoint_url]
  max_attempts:
    description:
      - Attempts per request (first try included) on throttling, server errors and dropped connections,
        with jittered exponential back-off; retries across the run also draw from a shared budget.
    type: int
    default: 10
notes:
  - Supports check mode and diff mode.
  - Run with C(async) and I(progress_file) to follow a long transfer from the play.
  - The manifest object C(<prefix>/.reefguide-manifest.json) belongs to this module; a source file of
    that name at the top of I(path) is refused.
  - Empty directories of a push source are recorded in the manifest and created by a pull.
requirements:
  - python >= 3.9
  - boto3 (any version from 1.26; used for credentials only)
"""

EXAMPLES = r"""
- name: Upload the data package to the transfer bucket
  s3_sync:
    direction: push
    path: ./data/Moore_2025-01-17_v070_rc1
    bucket: "{{ deployment.transfer_bucket }}"
    prefix: staging/Moore_2025-01-17_v070_rc1
    mode: mirror

- name: Preview what a pull would change, with the first paths of each list
  s3_sync:
    direction: pull
    bucket: "{{ deployment.transfer_bucket }}"
    prefix: staging/Moore_2025-01-17_v070_rc1
    path: /home/ec2-user/efs/data/reefguide/adria/datapackages/.staging/Moore_2025-01-17_v070_rc1
  check_mode: true
  diff: true

- name: Fill the staging directory on EFS, reporting progress while it runs
  s3_sync:
    direction: pull
    bucket: "{{ deployment.transfer_bucket }}"
    prefix: staging/reefguide
    path: /home/ec2-user/efs/data/reefguide-staging
    mode: mirror
    exclude: [cache]
    progress_file: /tmp/reefguide-pull.json
  async: 7200
  poll: 0
  register: pull_job
  become: true
"""

RETURN = r"""
started_at:
  description: When the module began, in seconds since the epoch (the stage summary's timeline).
  returned: success
  type: float
ended_at:
  description: When the transfer ended, in seconds since the epoch.
  returned: success
  type: float
direction:
  description: C(push) or C(pull), as given.
  returned: always
  type: str
bucket:
  description: The bucket.
  returned: always
  type: str
prefix:
  description: The prefix, normalised (no leading or trailing C(/)).
  returned: always
  type: str
  sample: staging/reefguide
path:
  description: The local path, absolute.
  returned: always
  type: str
mode:
  description: C(merge) or C(mirror).
  returned: always
  type: str
plan:
  description:
    - What the run does (check mode) or did (real run) decide. C(upload) on push, C(download) on pull;
      C(dirs_create), C(dirs_remove) and C(temporaries) (left by an interrupted pull) on pull only.
    - C(first) lists the first I(list_limit) relative paths, sorted.
  returned: always
  type: dict
  sample:
    upload: {files: 2, bytes: 4194304, first: [a/b.tif, config.toml]}
    delete: {files: 1, bytes: 10, first: [old.csv]}
    skip: {files: 1998, bytes: 81920000}
transferred:
  description: Files and bytes actually uploaded or downloaded.
  returned: always
  type: dict
  sample: {files: 2, bytes: 4194304}
skipped:
  description: Files left alone because both sides already had the same size and SHA-256.
  returned: always
  type: dict
  sample: {files: 1998, bytes: 81920000}
deleted:
  description: Objects (push) or local entries (pull) deleted by I(mode=mirror).
  returned: always
  type: dict
  sample: {files: 1}
dirs_created:
  description: Local directories created (pull).
  returned: always
  type: int
dirs_removed:
  description: Local directories removed by I(mode=mirror) (pull).
  returned: always
  type: int
temporaries_removed:
  description: Temporary files of an interrupted earlier pull that were removed.
  returned: always
  type: int
multipart_files:
  description: Files moved in parts (larger than I(part_size)).
  returned: always
  type: int
hashed:
  description: Local files and bytes read to compute a SHA-256 for the comparison (not served by the cache).
  returned: always
  type: dict
  sample: {files: 0, bytes: 0}
local_read:
  description: >-
    What the comparison read from the local side (for a stage's pull: from EFS): the files hashed
    (I(files), I(hashed_bytes)) and the checksum cache file (I(checksum_cache_bytes)); I(bytes) is their sum.
  returned: always
  type: dict
  sample: {files: 1, hashed_bytes: 1048576, checksum_cache_bytes: 2210, bytes: 1050786}
manifest_written:
  description: Whether the manifest object was rewritten (push only; it is not rewritten when unchanged).
  returned: always
  type: bool
requests:
  description: S3 requests sent, by operation.
  returned: always
  type: dict
  sample: {ListObjectsV2: 1, GetObject: 1}
retries:
  description: Requests retried after throttling, a server error or a dropped connection.
  returned: always
  type: int
seconds:
  description: Wall time of the sync.
  returned: always
  type: float
throughput_bytes_per_second:
  description: Bytes transferred divided by I(seconds).
  returned: always
  type: int
throughput:
  description: The same, human readable.
  returned: always
  type: str
  sample: 212.4 MiB/s
checksum_cache:
  description: The checksum cache file used.
  returned: always
  type: str
notes:
  description: >-
    Entries skipped (special files, temporaries found in a push source) and similar notes; each is
    also shown as a warning. (Not named C(warnings): that key is Ansible's own.)
  returned: always
  type: list
  elements: str
summary:
  description: One line saying what happened.
  returned: always
  type: str
  sample: "push: transferred 2 files (4.0 MiB), 1998 unchanged, 1 deleted, in 1.20 s (3.3 MiB/s)"
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import AWS_COMMON_ARGS, describe_error, error_code, require_boto3
from ansible.module_utils.reefguide.controller_watch import end_with
from ansible.module_utils.reefguide.credentials import environment_credentials
from ansible.module_utils.reefguide.detached_job import mark_began
from ansible.module_utils.reefguide.layout import RELEASES_DIR, is_mount_point
from ansible.module_utils.reefguide.paths import UnsafePathError
from ansible.module_utils.reefguide.releases_store import nested_release_targets
from ansible.module_utils.reefguide.sync import Sync, summary
from ansible.module_utils.reefguide.sync_common import SyncError, parse_size
from ansible.module_utils.reefguide.sync_options import SyncOptions


def argument_spec() -> dict:
    spec = dict(
        direction=dict(type="str", required=True, choices=["push", "pull"]),
        bucket=dict(type="str", required=True),
        prefix=dict(type="str", default=""),
        path=dict(type="path", required=True),
        mode=dict(type="str", default="merge", choices=["merge", "mirror"]),
        exclude=dict(type="list", elements="str", default=[]),
        efs_root=dict(type="path"),
        concurrency=dict(type="int", default=16),
        part_size=dict(type="str", default="16MiB"),
        sse=dict(type="str", default="AES256", choices=["AES256", "aws:kms", "none"]),
        sse_kms_key_id=dict(type="str"),
        max_delete=dict(type="int", default=-1),
        checksum_cache=dict(type="path"),
        rehash=dict(type="bool", default=False),
        progress_file=dict(type="path"),
        progress_interval=dict(type="float", default=2.0),
        list_limit=dict(type="int", default=20),
        require_mount=dict(type="path"),
        watch_pid=dict(type="int"),
    )
    spec.update(AWS_COMMON_ARGS)
    return spec


def released_below(efs_root: str, path: str) -> list[str]:
    """The targets released on their own below path, relative to it (none if path is not in efs_root)."""
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(efs_root))
    if rel == "." or rel.startswith(".."):
        return []
    return nested_release_targets(os.path.join(efs_root, RELEASES_DIR), rel)


def options_from(module: AnsibleModule) -> SyncOptions:
    p = module.params
    return SyncOptions(
        direction=p["direction"],
        bucket=p["bucket"],
        prefix=p["prefix"] or "",
        path=p["path"],
        mode=p["mode"],
        exclude=p["exclude"] or [],
        keep=released_below(p["efs_root"], p["path"]) if p["efs_root"] and p["direction"] == "pull" else [],
        concurrency=p["concurrency"],
        part_size=parse_size(p["part_size"]),
        sse=None if p["sse"] == "none" else p["sse"],
        sse_kms_key_id=p["sse_kms_key_id"],
        max_delete=None if p["max_delete"] is None or p["max_delete"] < 0 else p["max_delete"],
        checksum_cache=p["checksum_cache"],
        rehash=p["rehash"],
        progress_file=p["progress_file"],
        progress_interval=p["progress_interval"],
        dry_run=module.check_mode,
        region=p["region"],
        profile=p["profile"],
        endpoint_url=p["endpoint_url"],
        max_attempts=p["max_attempts"] or 10,
        list_limit=max(0, p["list_limit"]),
    )


def diff_text(result: dict) -> str:
    """The plan as lines a reviewer can read: + transfer, - delete."""
    plan = result["plan"]
    where = "s3://%s/%s" % (result["bucket"], result["prefix"])
    lines = []
    key = "upload" if result["direction"] == "push" else "download"
    target = where if key == "upload" else result["path"]
    section = plan[key]
    lines.append("%s %d file(s), %d bytes to %s" % (key, section["files"], section["bytes"], target))
    lines.extend("+ %s" % rel for rel in section["first"])
    if section["files"] > len(section["first"]):
        lines.append("  ... and %d more" % (section["files"] - len(section["first"])))
    deleted = plan["delete"]
    if deleted["files"]:
        lines.append(
            "delete %d entr%s from %s"
            % (deleted["files"], "y" if deleted["files"] == 1 else "ies", where if key == "upload" else result["path"])
        )
        lines.extend("- %s" % rel for rel in deleted["first"])
        if deleted["files"] > len(deleted["first"]):
            lines.append("  ... and %d more" % (deleted["files"] - len(deleted["first"])))
    for name, sign in (("dirs_create", "+"), ("dirs_remove", "-")):
        if plan.get(name, {}).get("count"):
            lines.append(
                "%s %d director%s"
                % (name.replace("_", " "), plan[name]["count"], "y" if plan[name]["count"] == 1 else "ies")
            )
            lines.extend("%s %s/" % (sign, rel) for rel in plan[name]["first"])
    lines.append("unchanged: %d file(s), %d bytes" % (plan["skip"]["files"], plan["skip"]["bytes"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    started = time.time()
    mark_began(module)  # before any work: a job lost before this is started again
    p = module.params
    if environment_credentials(p["profile"], p["region"])[0] is None:
        require_boto3(module)  # botocore finds the credentials; with keys in the environment it is not imported
    what = "%s of %s %s s3://%s/%s" % (
        p["direction"],
        p["path"],
        "to" if p["direction"] == "push" else "from",
        p["bucket"],
        p["prefix"] or "",
    )
    if p["require_mount"] and not is_mount_point(p["require_mount"]):
        module.fail_json(msg="%s refused: EFS is no longer mounted at %s (unmounted by another run or by hand?); "
                             "nothing was written, run again to mount it and carry on" % (what, p["require_mount"]))
    end_with(p["watch_pid"])  # the controller killed outright: stop as on SIGTERM, within a second
    sync = None
    try:
        sync = Sync(options_from(module))
        result = sync.run()
    except (SyncError, UnsafePathError) as exc:
        extra = sync.result() if sync is not None else {}
        extra.pop("changed", None)
        extra["notes"] = extra.pop("warnings", [])
        module.fail_json(
            msg="%s failed: %s" % (what, exc), changed=bool(extra.get("transferred", {}).get("files")), **extra
        )
    except Exception as exc:  # botocore / S3 errors: code and hint in the message
        extra = sync.result() if sync is not None else {}
        extra.pop("changed", None)
        extra["notes"] = extra.pop("warnings", [])
        module.fail_json(
            msg=describe_error(exc, what),
            error_code=error_code(exc),
            changed=bool(extra.get("transferred", {}).get("files")),
            **extra,
        )
    notes = result.pop("warnings", [])
    for note in notes:
        module.warn(note)
    result["notes"] = notes
    result["summary"] = summary(result)
    result.update(started_at=started, ended_at=time.time())
    if module._diff:
        result["diff"] = {"prepared": diff_text(result)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
