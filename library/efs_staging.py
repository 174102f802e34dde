#!/usr/bin/python
# reefguide-efs: a staging directory that starts as a hard-link copy of what is live.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: efs_staging
short_description: Prepare (or remove) a run's staging directory on EFS as a hard-link copy of the live target
description:
  - V(present) creates O(staging) as a copy of O(target) made of hard links (directories are
    created, files linked, symlinks recreated as links); it costs no EFS bytes and no download for
    files that do not change. The sync then replaces changed files with new ones (written to a
    temporary name and renamed, so the live copy's inode is never written) and deletes what the
    new version lacks, without touching the live version.
  - V(absent) deletes O(staging) (a failed run's leftover).
  - Every path is relative to O(root); C(..), absolute paths and symlinked parents leading out of
    O(root) are refused. Runs on the instance, with become.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  root:
    description: The EFS mount path on the instance.
    type: path
    required: true
  target:
    description: The live directory, relative to O(root). May not exist yet (then staging starts empty).
    type: str
  staging:
    description: The staging directory, relative to O(root) (e.g. C(.reefguide-staging/<dest key>/<target>)).
    type: str
    required: true
  exclude:
    description:
      - Paths relative to O(target) not copied (e.g. C(cache), which the release carries over).
      - Targets with releases of their own below O(target) (data packages under C(data/reefguide))
        are left out too; the release carries them over from the live version.
    type: list
    elements: str
    default: []
  releases_dir:
    description: The releases area relative to O(root), where nested released targets are found.
    type: str
    default: .reefguide-releases
  state:
    description: V(present) or V(absent).
    type: str
    choices: [present, absent]
    default: present
notes:
  - A staging directory that already exists is left as it is (a re-run of the same run resumes in it).
  - Owner, group and mode are shared with the live files through the hard links.
extends_documentation_fragment: [reefguide_efs_mounted]
"""

EXAMPLES = r"""
- name: Stage next to the live ADRIA package
  efs_staging:
    root: /home/ec2-user/efs
    target: data/reefguide/adria/datapackages/Moore_2025
    staging: .reefguide-staging/20261124T2015Z/data/reefguide/adria/datapackages/Moore_2025
  become: true
"""

RETURN = r"""
linked:
  description: Files hard-linked from the live target.
  returned: always
  type: int
bytes_linked:
  description: Their total size (not copied).
  returned: always
  type: int
dirs:
  description: Directories created.
  returned: always
  type: int
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.detached_job import mark_began
from ansible.module_utils.reefguide.fs import clone
from ansible.module_utils.reefguide.layout import RELEASES_DIR, efs_root_problem
from ansible.module_utils.reefguide.paths import UnsafePathError, parents_within, safe_join, safe_relpath
from ansible.module_utils.reefguide.releases_store import nested_release_targets


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            require_mount=dict(type="bool", default=False),
            target=dict(type="str"),
            staging=dict(type="str", required=True),
            exclude=dict(type="list", elements="str", default=[]),
            releases_dir=dict(type="str", default=RELEASES_DIR),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        required_if=[("state", "present", ["target"])],
        supports_check_mode=True,
    )
    mark_began(module)  # before any work: a job lost before this is started again
    p = module.params
    root = p["root"]
    problem = efs_root_problem(root, p["require_mount"])
    if problem:
        module.fail_json(msg=problem)
    try:
        staging = safe_join(root, p["staging"], "staging")
        target = safe_join(root, p["target"], "target") if p["target"] else None
        for path in filter(None, (staging, target)):
            if not parents_within(root, path):
                raise UnsafePathError("%s: a parent directory is a symlink leading out of %s" % (path, root))
        exclude = {safe_relpath(e, "exclude entry") for e in p["exclude"]}
        releases_root = safe_join(root, p["releases_dir"], "releases_dir")
    except UnsafePathError as exc:
        module.fail_json(msg="refused: %s" % exc)

    if p["state"] == "absent":
        exists = os.path.lexists(staging)
        if exists and not module.check_mode:
            shutil.rmtree(staging)
        module.exit_json(changed=exists, linked=0, bytes_linked=0, dirs=0, staging=staging)

    if os.path.lexists(staging):
        module.exit_json(changed=False, linked=0, bytes_linked=0, dirs=0, staging=staging, resumed=True)
    if module.check_mode:
        module.exit_json(changed=True, linked=0, bytes_linked=0, dirs=0, staging=staging)
    if target and os.path.isdir(target) and not os.path.islink(target):
        if os.path.isdir(releases_root):
            exclude |= set(nested_release_targets(releases_root, safe_relpath(p["target"], "target")))
        os.makedirs(os.path.dirname(staging), exist_ok=True)
        files, size, dirs = clone(target, staging, exclude)
    else:
        os.makedirs(staging)
        files = size = 0
        dirs = 1
    module.exit_json(changed=True, linked=files, bytes_linked=size, dirs=dirs, staging=staging, resumed=False)


if __name__ == "__main__":
    main()
