#!/usr/bin/python
# -*- coding: utf-8 -*-
# Runs on the management instance (with become): Python 3.9, stdlib only.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: efs_release
short_description: Make a verified staging directory on EFS the live data, keep releases for rollback
description:
  - Puts a staged, verified directory (for example one that M(s3_sync) filled and checked) in place
    of a live target on the mounted EFS file system in one step, so ReefGuide workers never see a
    half-updated dataset. The version it replaces is kept under a releases area for rollback; old
    releases are pruned to O(keep).
  - B(How the swap is done.) When the target exists, the module first tries
    C(renameat2(RENAME_EXCHANGE)), which swaps the staged and the live directory atomically; the
    outgoing version is then renamed into the releases area. The Linux NFS client (and so EFS)
    does not support that flag, so on a real instance it falls back to two renames on the same
    file system (live -> releases, staged -> live); between them, for the time of one NFS round
    trip, the target path does not exist. C(swap_method) in the result says which was used.
  - B(In place, for the workers' root.) ReefGuide's workers mount C(data/reefguide) as their EFS
    volume's root directory, and an NFS mount holds that directory itself (its file handle), not its path, so a
    whole-directory swap would leave running workers on the old directory, without C(cache/), and
    with stale handles once it is pruned. When the target is C(data/reefguide) or an ancestor
    of it (O(swap=auto)), the directory stays and its contents are swapped, each entry in one
    rename. A file is replaced by renaming the new one over it; a directory in both versions is
    kept (same inode) and updated inside, recursively; a new directory is prepared complete, then
    renamed in; entries the new version lacks move into the kept release. The previous version is
    kept as before (a hard-link copy made first), C(cache/) and separately released targets are
    never moved, so a running worker sees each file old or new, never missing, and never a stale
    handle. A rollback swaps in place the same way; pruning never touches the live directory.
  - B(Preserved entries.) Entries named in O(preserve) (paths relative to the target) travel from
    the outgoing version into the incoming one just before the swap. When the target is
    C(data/reefguide) (or an ancestor of it) the default is to preserve the workers' C(cache/)
    directory, and C(data/reefguide/cache) always exists after a release or rollback (created empty,
    with the owner of the version it is in, if no version had one). Targets released separately
    below the target (ADRIA data packages under C(data/reefguide)) are carried over the same way,
    so releasing C(data/reefguide) does not retire them. With O(preserve_mode=fresh)
    the old contents stay with the outgoing version (so a rollback brings back the cache that
    matches its data) and the incoming version gets an empty directory instead; that is what the
    upstream update procedure does when it clears C(data/reefguide/cache/*) after a data change.
  - B(Releases area.) C(<root>/<releases_dir>/<target key>/) holds one directory per kept release,
    named by release id, and C(history.json) (live release, kept releases, times, file counts and
    bytes). The target key is the target path with C(%) and C(/) percent-encoded
    (C(data/reefguide) -> C(data%2Freefguide)).
  - B(Safety.) All relative paths are checked (no C(..), not absolute) and every parent directory
    must resolve inside O(root); a symlink that leads out of the EFS root is refused, and the
    target, the staging directory and releases are never followed through a symlink. Runs on one
    target are serialised with a lock file. An interrupted swap is detected from a journal in
    C(history.json) and completed or undone by the next run.
version_added: "0.1.0"
author: reefguide-efs contributors
options:
  root:
    description:
      - The EFS mount path on the instance (for example C(/home/ec2-user/efs)). Every other path
        is relative to it.
    type: path
    required: true
  target:
    description:
      - The live directory, relative to O(root), for example
        C(data/reefguide/adria/datapackages/Moore_2025-01-17_v070_rc1) or C(data/reefguide).
      - Required unless O(state=pruned), where omitting it prunes every target in O(releases_dir).
    type: str
  staging:
    description:
      - With O(state=released), the staged, verified directory relative to O(root), on the same
        file system (for example C(.reefguide-staging/<dest key>/data/reefguide)). It becomes the
        target; its empty parent directories are removed afterwards.
      - With O(state=pruned), a staging leftover (for example C(.reefguide-staging)) to delete
        together with the old releases.
    type: str
  staging_area:
    description:
      - With O(state=released), the run's staging area relative to O(root), a directory holding
        O(staging) (for example C(.reefguide-staging/<dest key>)). It is deleted once the release is
        done, with what is left in it (after an in-place release, the staged tree whose files went
        live as hard links), in the same call, so a run needs no step of its own for it.
    type: str
  unchanged:
    description:
      - With O(state=released), the caller's word that O(staging) holds exactly what is live (a fresh
        hard-link copy of the target that the pull changed nothing in). Then nothing is released; the
        staged copy is deleted, the live release stays (no new release pushes a distinct kept one out
        of O(keep)), and C(unchanged) is true in the result. Ignored when the target has no release.
    type: bool
    default: false
  state:
    description:
      - V(released) makes O(staging) the live target and keeps the previous version as a release.
      - V(rolled_back) puts a kept release back in place (the one live before the current one, or
        O(release_id)); the version it replaces is kept as a release, so rolling back is undoable
        with O(release_id). Without O(release_id), a target that is already live from a rollback is
        left alone (changed false), so repeat runs do not flip back and forth.
      - V(pruned) deletes kept releases beyond O(keep) (and O(staging) if given).
    type: str
    choices: [released, rolled_back, pruned]
    default: released
  keep:
    description:
      - How many previous releases to keep per target (0 keeps none). Applied after a release and
        by O(state=pruned); a rollback prunes nothing.
    type: int
    default: 2
  release_id:
    description:
      - With O(state=released), the id of the new release (1-100 characters from C(A-Za-z0-9._+-),
        starting with a letter or digit). Default the UTC time, C(YYYYMMDDTHHMMSSZ), with C(-2),
        C(-3)... appended if taken. A release id already live with no staging directory left is an
        idempotent repeat (changed false).
      - With O(state=rolled_back), the kept release to restore (default the previous one).
    type: str
  releases_dir:
    description:
      - Releases area, relative to O(root).
    type: str
    default: .reefguide-releases
  preserve:
    description:
      - Entries (paths relative to the target) carried from the outgoing version into the incoming
        one. Default C([cache]) when the target is C(data/reefguide), C([reefguide/cache]) when it
        is C(data), and so on for any ancestor of C(data/reefguide/cache); otherwise none.
      - If the incoming version already holds a non-empty entry of that name, the run fails before
        changing anything (an empty directory there is replaced).
    type: list
    elements: str
  preserve_mode:
    description:
      - V(move) moves each preserved entry, contents included, into the incoming version.
      - V(fresh) leaves the contents with the outgoing version (kept for rollback) and gives the
        incoming version an empty directory of the same owner and mode.
    type: str
    choices: [move, fresh]
    default: move
  owner:
    description:
      - User name or uid that should own the staged files before they go live (changed only
        where different, symlinks not followed). Not touched when omitted.
    type: str
  group:
    description:
      - Group name or gid for the staged files, as O(owner).
    type: str
  swap:
    description:
      - V(auto) swaps atomically with C(renameat2(RENAME_EXCHANGE)) where the file system supports
        it and falls back to two renames. V(exchange) fails rather than fall back. V(rename) always
        uses two renames (what happens on EFS). V(in_place) swaps the contents and keeps the
        target directory, which V(auto) does for C(data/reefguide) and its ancestors (see notes).
    type: str
    choices: [auto, exchange, rename, in_place]
    default: auto
  lock_timeout:
    description:
      - Seconds to wait for another run on the same target (a lock file in its releases directory)
        before failing.
    type: int
    default: 600
  workers_since:
    description:
      - When the oldest worker task still running started (epoch seconds; C(ecs_workers) with O(restart=none) on
        the controller), or V(0) when that is unknown. A release of the workers' root, of an ancestor or of a
        destination below it that was retired after that time is kept beyond O(keep), as the worker may hold its
        files open, and on NFS deleting them gives it stale file handles. A later prune deletes it once no
        such worker runs. Unset, no worker runs and O(keep) alone decides.
    type: float
notes:
  - Needs write access to the EFS root (C(become) on the instance).
  - Supports C(--check) (the same checks and plan, nothing written; a default O(release_id) is
    time based, so the real run may pick a later second) and C(--diff) (which release becomes live,
    which are kept and which are pruned).
extends_documentation_fragment: [reefguide_efs_mounted]
"""

EXAMPLES = r"""
- name: Make the staged data package live (keeps the previous two versions)
  efs_release:
    root: /home/ec2-user/efs
    target: data/reefguide/adria/datapackages/Moore_2025-01-17_v070_rc1
    staging: .reefguide-staging/{{ run_id }}/Moore_2025-01-17_v070_rc1
    release_id: "{{ run_id }}"
    owner: ec2-user
    group: ec2-user
  become: true
  register: release

- name: Replace data/reefguide; the workers' cache/ is carried over and always exists
  efs_release:
    root: /home/ec2-user/efs
    target: data/reefguide
    staging: .reefguide-staging/{{ run_id }}/reefguide
    preserve_mode: fresh   # start with an empty cache, as the upstream update procedure does
  become: true

- name: Undo the last release
  efs_release:
    root: /home/ec2-user/efs
    target: data/reefguide
    state: rolled_back
  become: true

- name: Teardown - keep one old release of every target, remove staging leftovers
  efs_release:
    root: /home/ec2-user/efs
    state: pruned
    keep: 1
    staging: .reefguide-staging
  become: true
"""

RETURN = r"""
release_id:
  description: The release live at the target after the call (predicted in check mode).
  returned: when a target is given
  type: str
  sample: 20250617T031500Z
previous_release_id:
  description: The release that was live before this call and is now kept as a release (null if none was replaced).
  returned: when a target is given
  type: str
target_path:
  description: Absolute path of the target.
  returned: when a target is given
  type: str
  sample: /home/ec2-user/efs/data/reefguide
staging_path:
  description: Absolute path of the staging directory, if given.
  returned: when staging is given
  type: str
releases_path:
  description: Directory holding this target's kept releases and C(history.json).
  returned: when a target is given
  type: str
  sample: /home/ec2-user/efs/.reefguide-releases/data%2Freefguide
releases:
  description: Kept releases of the target after the call, newest first.
  returned: when a target is given
  type: list
  elements: str
swap_method:
  description: >-
    C(exchange) (atomic renameat2 swap), C(two_renames) (fallback, e.g. on EFS), C(in_place) (the
    target directory kept, its contents swapped entry by entry), C(rename) (the
    target did not exist: one atomic rename), or null when nothing was swapped. In check mode, the
    method that will be tried first.
  returned: always
  type: str
preserved:
  description: What happened to each preserved entry and to the cache (entry, action, from, to).
  returned: when a target is given
  type: list
  elements: dict
  sample: [{"entry": "cache", "action": "moved", "from": "20250601T000000Z", "to": "20250617T031500Z"}]
cache:
  description: >-
    For targets that contain C(data/reefguide/cache): its path and what was done with it (C(moved),
    C(kept_incoming), C(created_empty), C(unchanged)).
  returned: when the target contains data/reefguide/cache
  type: dict
  sample: {"path": "/home/ec2-user/efs/data/reefguide/cache", "action": "moved"}
pruned:
  description: >-
    Releases deleted (or to delete in check mode), with the bytes each deletion frees: a file still
    hard-linked from a version that stays (releases share unchanged files) frees nothing.
  returned: always
  type: list
  elements: dict
  sample: [{"target": "data/reefguide", "release_id": "20250501T000000Z", "bytes": 1048576}]
held:
  description: >-
    Releases beyond O(keep) kept because a worker task still running started before they were retired
    (O(workers_since)), each with its target and retirement time.
  returned: always
  type: list
  elements: dict
  sample: [{"target": "data/reefguide", "release_id": "20250501T000000Z", "retired_at": "2025-05-02T03:04:05Z"}]
bytes_freed:
  description: >-
    Bytes freed by pruning releases and removing O(staging) (O(state=pruned)): a file counts once,
    and only when its last hard link is deleted.
  returned: always
  type: int
staging_removed:
  description: Whether the O(staging) leftover was (or would be) deleted (O(state=pruned)).
  returned: when state is pruned
  type: bool
unchanged:
  description: Whether nothing was released because O(unchanged) said the staged tree is what is live.
  returned: when state is released and O(unchanged) applied
  type: bool
staging_area_removed:
  description: What deleting O(staging_area) after the release removed (files and bytes freed).
  returned: when state is released and O(staging_area) is given
  type: dict
  sample: {"files": 12, "bytes": 0}
chowned:
  description: Number of staged entries whose owner or group was (or would be) changed (O(owner), O(group)).
  returned: when state is released and something is released
  type: int
recovered:
  description: What was done about an interrupted earlier run found in the journal (null if none).
  returned: always
  type: str
rollback:
  description: How to go back to the previous version.
  returned: when a target is given
  type: str
live_changed:
  description: >-
    Whether what is live changed (a release or rollback swapped, an interrupted swap was repaired). On
    failure: whether it may have changed before the failure (false: the failure came first).
  returned: always but for O(state=pruned)
  type: bool
msg:
  description: One line saying what happened.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.detached_job import mark_began
from ansible.module_utils.reefguide.paths import UnsafePathError
from ansible.module_utils.reefguide.release import (
    EFS_RELEASE_ARGS,
    EFS_RELEASE_REQUIRED_IF,
    ReleaseError,
    run_efs_release,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=EFS_RELEASE_ARGS,
        required_if=EFS_RELEASE_REQUIRED_IF,
        supports_check_mode=True,
    )
    mark_began(module)  # before any work: a job lost before this is started again
    try:
        result = run_efs_release(module, module.params, module.check_mode, module._diff)
    except (ReleaseError, UnsafePathError) as exc:
        # live_changed: whether what is live may have changed before the failure (the caller's record
        # of it is then not to be trusted); False when the failure came before anything was touched
        module.fail_json(msg=str(exc), live_changed=bool(getattr(exc, "live_touched", False)))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
