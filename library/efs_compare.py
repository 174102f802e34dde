#!/usr/bin/python
# reefguide-efs: what a stage would change on EFS, for a check run that finds the instance running.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: efs_compare
short_description: Compare a local tree's manifest with what EFS holds at a destination
description:
  - Walks the destination on the mounted EFS and compares it with O(files), the manifest of the
    local tree a stage would send (each file's size and SHA-256), as the stage itself would. The
    workers' cache and the targets released on their own below the destination are left out (a
    stage keeps them as they are). A file of the same size is read and hashed; one of another size
    has changed.
  - For a check run (C(stage_data.yml --check)) when no record of what is live can be trusted and the
    instance is already running. The plan then says what EFS holds, not what a record claims.
  - Read-only; runs on the instance.
version_added: "0.3.0"
author: reefguide-efs developers
options:
  root:
    description: The EFS mount path on the instance.
    type: path
    required: true
  dest:
    description: The destination, relative to O(root).
    type: str
    required: true
  files:
    description: The local manifest, relative path -> [size, SHA-256].
    type: dict
    required: true
  mode:
    description: The stage mode; V(merge) removes nothing, so nothing counts as removed.
    type: str
    choices: [replace, merge, mirror]
    default: replace
"""

EXAMPLES = r"""
- name: What a stage of these files would change at data/reefguide/config
  efs_compare:
    root: /home/ec2-user/efs
    dest: data/reefguide/config
    files: {"settings.json": [120, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]}
  become: true
"""

RETURN = r"""
exists:
  description: Whether the destination is a directory on EFS.
  returned: always
  type: bool
counts:
  description: Files new, changed, removed (by V(replace) or V(mirror)) and unchanged.
  returned: always
  type: dict
new:
  description: The first 20 new files.
  returned: always
  type: list
changed_files:
  description: The first 20 changed files.
  returned: always
  type: list
removed:
  description: The first 20 files a V(replace) or V(mirror) stage would remove.
  returned: always
  type: list
"""

import os
import stat
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.checksums import hash_file
from ansible.module_utils.reefguide.detached_job import mark_began
from ansible.module_utils.reefguide.layout import RELEASES_DIR, cache_inside, efs_root_problem
from ansible.module_utils.reefguide.paths import safe_relpath
from ansible.module_utils.reefguide.releases_store import nested_release_targets


def files_on_efs(top: str, left_out: tuple[str, ...]) -> dict[str, int]:
    """rel -> size of every regular file below top, the subtrees left_out ('a/b/') skipped."""
    found: dict[str, int] = {}
    for dirpath, dirs, names in os.walk(top):
        here = os.path.relpath(dirpath, top)
        prefix = "" if here == "." else here + "/"
        dirs[:] = [d for d in dirs if not (prefix + d + "/").startswith(left_out)]
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[prefix + name] = st.st_size
    return found


def compare(root: str, dest: str, local: dict[str, Any], mode: str) -> dict[str, Any]:
    top = os.path.join(root, dest)
    left_out = tuple(rel + "/" for rel in nested_release_targets(os.path.join(root, RELEASES_DIR), dest))
    cache = cache_inside(dest)
    if cache:
        left_out += (cache + "/",)
    on_efs = files_on_efs(top, left_out) if os.path.isdir(top) else {}
    new, changed, unchanged = [], [], 0
    for rel in sorted(local):
        size, sha = local[rel]
        if rel not in on_efs:
            new.append(rel)
        elif on_efs[rel] != size or hash_file(os.path.join(top, rel)).hexdigest() != sha:
            changed.append(rel)
        else:
            unchanged += 1
    removed = [] if mode == "merge" else sorted(rel for rel in on_efs if rel not in local)
    return {"exists": os.path.isdir(top), "new": new[:20], "changed_files": changed[:20], "removed": removed[:20],
            "counts": {"new": len(new), "changed": len(changed), "removed": len(removed), "unchanged": unchanged}}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(root=dict(type="path", required=True), dest=dict(type="str", required=True),
                           files=dict(type="dict", required=True),
                           mode=dict(type="str", default="replace", choices=["replace", "merge", "mirror"])),
        supports_check_mode=True,
    )
    mark_began(module)  # before any work: a job lost before this is started again
    p = module.params
    problem = efs_root_problem(p["root"])
    if problem:
        module.fail_json(msg=problem)
    try:
        dest = safe_relpath(p["dest"], "dest")
        result = compare(p["root"], dest, p["files"], p["mode"])
    except (ValueError, OSError) as exc:
        module.fail_json(msg="comparing with what EFS holds at %s: %s" % (p["dest"], exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
