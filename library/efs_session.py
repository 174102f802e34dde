#!/usr/bin/python
# Documentation of the efs_session action (action_plugins/efs_session.py). The work
# is done by the action plugin, which runs the capability modules below in
# one SSM session; this file carries its documentation for ansible-doc.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: efs_session
short_description: The remote part of a stage, teardown or rollback, in one SSM session
description:
  - Runs on the management instance, with become, as one task (one SSM session). Every operation
    mounts EFS first (C(efs_mount)) and leaves the mount as it found it afterwards.
  - V(stage) calls in turn
    C(efs_mount) (mount EFS), C(efs_staging) (a hard-link copy of the live target to stage into),
    C(s3_sync) (pull the run's upload into it, every file's SHA-256 verified before it is renamed
    into place), C(efs_release) (make it live in one step, previous version kept), C(efs_tidy)
    (empty the workers' cache if asked).
  - V(teardown) prunes releases beyond O(keep) and staging leftovers (C(efs_release) state=pruned)
    and deletes O(remove) paths under O(allowed_roots) (C(efs_tidy)).
  - V(rollback) puts the previous release of O(dest) (or O(release_id)) back (C(efs_release)).
  - With O(mode=mirror) the pull goes straight into O(dest) (no staging copy, no release); the workers'
    cache and the targets released on their own below O(dest) are left as they are.
  - On failure EFS is unmounted if this task mounted it, the staging directory left behind is
    reported for teardown, and C(live_changed) says whether what is live changed before it (a failure
    before the release leaves it untouched).
version_added: "0.1.0"
author: reefguide-efs developers
options:
  operation:
    description:
      - What to do. V(compare) (a check run that finds the instance running, with no record of what is
        live to trust) compares O(files) with what EFS holds at O(dest) (C(efs_compare)); read-only.
    type: str
    choices: [stage, teardown, rollback, compare]
    default: stage
  files:
    description: With V(compare), the local manifest, relative path -> [size, SHA-256] (C(live_manifest) O(with_files)).
    type: dict
  install_packages:
    description: Install python3-boto3 on the instance (dnf, or apt) when its python lacks boto3.
    type: bool
    default: true
  remove: {description: With teardown, extra paths (relative to the EFS root) to delete., type: list, elements: str}
  allowed_roots: {description: With teardown, where O(remove) may delete., type: list, elements: str}
  fs_id: {description: EFS file-system id., type: str, required: true}
  efs_root: {description: Mount path of EFS on the instance (e.g. /home/ec2-user/efs)., type: str, required: true}
  user: {description: The operator user; owns the mount root and released files., type: str, default: ec2-user}
  mount_options: {description: Mount options., type: str, default: "tls,iam"}
  bucket: {description: Transfer bucket (stage)., type: str}
  prefix: {description: The run's upload prefix (stage)., type: str}
  dest: {description: Destination relative to the EFS root (stage, rollback)., type: str}
  staging: {description: Staging directory relative to the EFS root (stage)., type: str}
  staging_area:
    description: The destination's area under the staging root, removed after its release (stage_request's).
    type: str
  staging_root:
    description: The staging root, whose leftovers teardown removes (run_request's C(staging_root)).
    type: str
  cache_in_dest:
    description: The workers' cache relative to O(dest) when O(dest) holds it (stage_request's C(cache_in_dest)).
    type: str
  cache:
    description: The workers' cache relative to the EFS root, emptied by O(clear_cache) (stage_request's C(cache)).
    type: str
  checksum_cache:
    description:
      - The pull's checksum cache relative to O(efs_root) (stage_request's C(checksum_cache)); without it the
        cache is on the instance's disk, lost when the instance is replaced.
    type: str
  run_id: {description: The run id (stage; names the staging area removed after the release)., type: str}
  mode: {description: How the destination is updated., type: str, choices: [replace, merge, mirror], default: replace}
  clear_cache: {description: Empty data/reefguide/cache after the release (kept)., type: bool, default: false}
  keep: {description: Previous releases kept., type: int, default: 2}
  workers_since:
    description: >-
      When the oldest running worker task started (epoch seconds, C(ecs_workers) O(restart=none)); 0 when unknown.
      Releases the workers may hold open are kept beyond O(keep) (C(efs_release) O(workers_since)).
    type: float
  release_id: {description: Id of the new release (default time-based)., type: str}
  concurrency: {description: Parallel downloads., type: int, default: 16}
  endpoint_url: {description: S3 endpoint for the instance (the lab only)., type: str}
  region: {description: AWS region., type: str}
  fingerprint:
    description:
      - Destinations whose records of what is live carry a fingerprint (C(live_manifest) state=listed).
        Their fingerprints are taken again at the end of the session (C(efs_usage)), with O(dest)'s
        after a stage, so the controller can drop the records that a hand edit made untrue.
    type: list
    elements: str
    default: []
  release_timeout:
    description:
      - Seconds the step that changes what is live (the release, a rollback, a removal) may take, its own limit
        whatever the pull left of O(remote_timeout). At it, async_wrapper kills the step, which the next run's
        release repairs from its journal. A failure while it may still run leaves the instance running
        (C(job_running) in the result).
    type: int
    default: 3600
  remote_timeout:
    description:
      - Seconds the whole operation may take on the instance. Every step but the mount runs detached
        (Ansible async, out of the SSM session, which Session Manager ends after its idle timeout) under
        this time limit, followed with short polls; each call over SSM has the connection's own ssm_timeout.
    type: int
    default: 14400
  poll_interval:
    description: Longest wait between two polls of a detached step (from 0.25 s, doubling); well under the idle timeout.
    type: float
    default: 10
  progress_file:
    description: A file on the controller that each poll of the pull rewrites with its progress (JSON, as s3_sync's).
    type: str
"""

EXAMPLES = r"""
- name: Stage on the instance
  efs_session:
    operation: stage
    fs_id: fs-0123456789abcdef0
    efs_root: /home/ec2-user/efs
    bucket: reefguide-transferbucket
    prefix: reefguide-efs/runs/20261124T201500Z-1a2b/
    dest: data/reefguide/adria/datapackages/Moore_2025
    staging: .reefguide-staging/20261124T201500Z-1a2b/data/reefguide/adria/datapackages/Moore_2025
    run_id: 20261124T201500Z-1a2b
  become: true
"""

RETURN = r"""
started_at:
  description: When the session's work began, in seconds since the epoch (the stage summary's timeline).
  returned: when its arguments were valid
  type: float
ended_at:
  description: When it ended, in seconds since the epoch.
  returned: success
  type: float
job_running:
  description: >-
    After a failure, the job that changes what is live when it may still be running on the instance (its step,
    module, job id and record): the playbooks then leave the instance running, and the next run waits for it.
  returned: when a failure left such a job running or unknown
  type: dict
steps:
  description: >-
    Each step's module result (mount, prepare, pull, release (which also deletes the staging
    area), clear_cache, prune, remove, rollback, unmount).
  returned: always
  type: dict
pull:
  description: >-
    The s3_sync pull's result (files and bytes transferred, skipped, deleted, seconds; C(local_read): what it
    read from EFS to compare).
  returned: success
  type: dict
release_id:
  description: The release made live (null with mode=mirror).
  returned: success
  type: str
previous_release_id:
  description: The release it replaced.
  returned: success
  type: str
fingerprints:
  description: Destination -> its fingerprint now (see O(fingerprint)); empty when EFS could not be walked in time.
  returned: success
  type: dict
live_changed:
  description: >-
    Whether the step that changes what is live (the release, the rollback, the removal, or a mirror
    pull straight into the destination) changed it: true, false (not reached, or it failed before
    touching anything), or null when unknown (the step began and was lost with the session or the
    instance, or failed without saying). The playbooks' summaries say so after a failure.
  returned: always
  type: bool
staging_left:
  description: On failure, the staging directory left for teardown.
  returned: failure
  type: str
remote_jobs:
  description: The steps this task ran detached (jid, step, module), in order.
  returned: always
  type: list
waited_for:
  description: Steps an earlier run left running on the instance that this task waited for (jid, step, run_id, failed).
  returned: when the session started
  type: list
polls:
  description: Polls of detached steps made (each one short command over SSM).
  returned: success
  type: int
"""
