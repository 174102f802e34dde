#!/usr/bin/python
# -*- coding: utf-8 -*-
# reefguide-efs: delete superfluous data on EFS, never outside the allowed roots.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: efs_tidy
short_description: Remove superfluous data on the mounted EFS, only inside allowed roots
description:
  - Deletes paths (files or whole directories) and empties directories (their contents go, the
    directory stays, as the workers' C(cache/) must) under the EFS mount of the management instance.
  - Every path is relative to O(root) and must lie under one of O(allowed_roots) (the tool's own
    staging and releases areas are always allowed). C(..), absolute paths and paths whose parent
    directories are symlinks leading elsewhere are refused before anything is deleted.
  - Whatever O(allowed_roots) says, the workers' root C(data/reefguide), every directory holding it
    (C(data)) and their C(cache/) with what is in it are never removed, whether named or reached
    through symlinked parents; only the cache itself may be emptied.
  - A symlink is removed as a link; its target is never followed or touched.
  - Released data is never simply deleted. A path in O(remove) that is a destination with releases of
    its own (staged by stage_data.yml), or holds such destinations, keeps each one's version as a
    release in C(.reefguide-releases) (C(kept_as_release)); C(rollback.yml) puts it back until
    teardown's C(keep) prunes it. The rest of the path is deleted.
  - Runs on the instance, with become.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  root:
    description: The EFS mount path on the instance (e.g. C(/home/ec2-user/efs)).
    type: path
    required: true
  remove:
    description: Paths relative to O(root) to delete entirely. Missing ones are skipped.
    type: list
    elements: str
    default: []
  empty:
    description:
      - Directories relative to O(root) whose contents are deleted; the directory itself is kept,
        and created (mode 0755) if missing.
    type: list
    elements: str
    default: []
  allowed_roots:
    description: Relative paths under which deletion is allowed.
    type: list
    elements: str
    default: [data/reefguide]
  internal_roots:
    description: The tool's own areas on EFS, always allowed.
    type: list
    elements: str
    default: [.reefguide-staging, .reefguide-releases]
notes:
  - Check mode lists what would be deleted, with sizes, and deletes nothing. C(--diff) shows the list.
extends_documentation_fragment: [reefguide_efs_mounted]
"""

EXAMPLES = r"""
- name: Empty the ReefGuide worker cache (keep the directory)
  efs_tidy:
    root: /home/ec2-user/efs
    empty: [data/reefguide/cache]
  become: true

- name: Remove staging leftovers and an old data package
  efs_tidy:
    root: /home/ec2-user/efs
    remove:
      - .reefguide-staging
      - data/reefguide/adria/datapackages/old_package
  become: true
"""

RETURN = r"""
removed:
  description: >-
    What was (or in check mode would be) deleted: the files it held and the bytes its deletion frees
    (a file hard-linked from elsewhere frees nothing until its last link goes).
  returned: always
  type: list
  elements: dict
  sample: [{"path": ".reefguide-staging", "files": 12, "bytes": 1048576}]
kept_as_release:
  description: >-
    The destinations with releases of their own at or below a removed path, whose versions were (or
    would be) kept as releases instead of deleted: target, release_id, files and bytes.
  returned: always
  type: list
  elements: dict
  sample: [{"target": "data/reefguide/adria/datapackages/old", "release_id": "20261207T070000Z", "bytes": 10}]
emptied:
  description: Directories emptied, with the files that were in them and the bytes freed.
  returned: always
  type: list
  elements: dict
files_removed:
  description: Files deleted in total.
  returned: always
  type: int
bytes_freed:
  description: Bytes freed in total (a hard-linked file once, when its last link is deleted).
  returned: always
  type: int
"""

import os
import stat
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.detached_job import mark_began
from ansible.module_utils.reefguide.fs import FreedBytes, remove_tree
from ansible.module_utils.reefguide.layout import (
    RELEASES_DIR,
    STAGING_DIR,
    WORKERS_ROOT,
    efs_root_problem,
    removal_problem,
    target_key,
)
from ansible.module_utils.reefguide.paths import (
    UnsafePathError,
    human_bytes,
    parents_within,
    safe_join,
    safe_relpath,
)
from ansible.module_utils.reefguide.release import retire_target
from ansible.module_utils.reefguide.releases_store import ReleaseError, nested_release_targets


def check_path(root: str, rel: str, allowed: list[str], emptying: bool = False) -> str:
    """The absolute path for rel, or UnsafePathError. The workers' root, their cache and what holds
    them are refused as named and as reached through symlinked parents, whatever the allowed roots."""
    norm = safe_relpath(rel, "path")
    if not any(norm == a or norm.startswith(a.rstrip("/") + "/") for a in allowed):
        raise UnsafePathError("%r is outside the allowed roots (%s)" % (rel, ", ".join(allowed)))
    path = safe_join(root, norm)
    if not parents_within(root, path):
        raise UnsafePathError("%r: a parent directory is a symlink leading out of %s" % (rel, root))
    reached = os.path.relpath(os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)),
                              os.path.realpath(root))
    for name in dict.fromkeys((norm, reached)):
        problem = removal_problem(name, emptying)
        if problem:
            raise UnsafePathError(problem if name == norm else "%r leads through a symlink to %s" % (rel, problem))
    return path


def released_within(root: str, rel: str) -> list[str]:
    """The destinations with releases of their own at or below rel, deepest first."""
    releases_root = os.path.join(root, RELEASES_DIR)
    norm = safe_relpath(rel, "path")
    below = sorted((norm + "/" + sub for sub in nested_release_targets(releases_root, norm)),
                   key=lambda t: (-t.count("/"), t))
    return below + ([norm] if os.path.isdir(os.path.join(releases_root, target_key(norm))) else [])


def keep_released(module: AnsibleModule, root: str, removals: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Each released destination at or below a path to remove: its version kept as a release."""
    kept = []
    for rel, _path in removals:
        if safe_relpath(rel, "path").split("/")[0] in (RELEASES_DIR, STAGING_DIR):
            continue  # the tool's own areas hold no live version
        for target in released_within(root, rel):
            done = retire_target(module, root, target, module.check_mode)
            if done:
                kept.append(done)
    return kept


def remove_all(root: str, removals: list[tuple[str, str]], dry_run: bool, freed: FreedBytes,
               kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Delete each (rel, path) that exists, less what was kept as a release; what each held and freed
    (in check mode what is kept is still there, and left out of the count)."""
    removed = []
    for rel, path in removals:
        norm = safe_relpath(rel, "path")
        inner = [k["target"][len(norm) + 1:] for k in kept if k["target"].startswith(norm + "/")]
        if not os.path.lexists(path) or any(k["target"] == norm for k in kept):
            continue
        if dry_run and inner:
            files, size = freed.tree(path, inner)
        else:
            files, size = remove_tree(root, path, dry_run, freed)
        removed.append({"path": rel, "files": files, "bytes": size})
    return removed


def empty_all(root: str, empties: list[tuple[str, str]], dry_run: bool,
              freed: FreedBytes) -> tuple[list[dict[str, Any]], list[str]]:
    """Empty each directory (created if missing): (emptied, created)."""
    emptied, created = [], []
    for rel, path in empties:
        if not os.path.isdir(path):
            created.append(rel)
            if not dry_run:
                os.makedirs(path, mode=0o755)
            continue
        entries = len(os.listdir(path))
        if entries:
            files, size = remove_tree(root, path, dry_run, freed, contents_only=True)
            emptied.append({"path": rel, "files": files, "bytes": size, "entries": entries})
    return emptied, created


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            require_mount=dict(type="bool", default=False),
            remove=dict(type="list", elements="str", default=[]),
            empty=dict(type="list", elements="str", default=[]),
            allowed_roots=dict(type="list", elements="str", default=[WORKERS_ROOT]),
            internal_roots=dict(type="list", elements="str", default=[STAGING_DIR, RELEASES_DIR]),
        ),
        supports_check_mode=True,
    )
    mark_began(module)  # before any work: a job lost before this is started again
    p = module.params
    root = p["root"]
    problem = efs_root_problem(root, p["require_mount"])
    if problem:
        module.fail_json(msg=problem)
    allowed = [safe_relpath(a, "allowed root") for a in p["allowed_roots"] + p["internal_roots"]]

    # Check every path before deleting any.
    try:
        removals = [(rel, check_path(root, rel, allowed)) for rel in p["remove"]]
        empties = [(rel, check_path(root, rel, allowed, emptying=True)) for rel in p["empty"]]
    except UnsafePathError as exc:
        module.fail_json(msg="refused, nothing deleted: %s" % exc)
    for rel, path in empties:
        if os.path.lexists(path) and not stat.S_ISDIR(os.lstat(path).st_mode):
            module.fail_json(msg="refused, nothing deleted: %r is not a directory" % rel)

    freed = FreedBytes()  # one tally: a file linked from two deleted paths counts once
    try:
        kept = keep_released(module, root, removals)
    except (ReleaseError, OSError) as exc:
        module.fail_json(msg="keeping the released data at a path to remove as a release failed, nothing "
                             "deleted: %s" % exc, live_changed=bool(getattr(exc, "live_touched", True)))
    removed = remove_all(root, removals, module.check_mode, freed, kept)
    emptied, created = empty_all(root, empties, module.check_mode, freed)

    total_files = sum(r["files"] for r in removed + emptied)
    total_bytes = sum(r["bytes"] for r in removed + emptied)
    lines = ["- %s (%d files, %s)" % (r["path"], r["files"], human_bytes(r["bytes"])) for r in removed]
    lines += ["- %s/* (%d files, %s)" % (r["path"], r["files"], human_bytes(r["bytes"])) for r in emptied]
    lines += ["+ %s/ (created)" % rel for rel in created]
    lines += ["> %s kept as release %s (%s)" % (k["target"], k["release_id"], human_bytes(k["bytes"] or 0))
              for k in kept]
    module.exit_json(
        changed=bool(removed or emptied or created or kept),
        removed=removed, emptied=emptied, created=created, kept_as_release=kept,
        files_removed=total_files, bytes_freed=total_bytes,
        diff={"before_header": "%s (to delete)" % root, "before": "\n".join(lines) + ("\n" if lines else ""),
              "after_header": "%s (after)" % root, "after": ""},
    )


if __name__ == "__main__":
    main()
