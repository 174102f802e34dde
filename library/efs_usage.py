#!/usr/bin/python
# reefguide-efs: what the data on EFS adds up to, for the run's summary.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: efs_usage
short_description: Measure the bytes stored under the EFS mount, by area
description:
  - Walks the mounted EFS (symlinks not followed, hard links counted once) and adds up the bytes of
    the live data, the kept releases and staging leftovers, so a summary can state the storage that
    bills by the GB-month. EFS's own metered size lags by up to an hour; this is exact now.
  - Stops after O(max_seconds) and then reports a lower bound (C(complete=false)).
  - Read-only; runs on the instance.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  root:
    description: The EFS mount path on the instance.
    type: path
    required: true
  max_seconds:
    description: Time budget for the walk.
    type: float
    default: 20
"""

EXAMPLES = r"""
- name: How much is on EFS
  efs_usage:
    root: /home/ec2-user/efs
  become: true
"""

RETURN = r"""
bytes:
  description: Bytes in regular files under the root (hard links once).
  returned: always
  type: int
files:
  description: Regular files counted.
  returned: always
  type: int
areas:
  description: Bytes per top-level entry of the root (e.g. data, .reefguide-releases, .reefguide-staging).
  returned: always
  type: dict
complete:
  description: False when the time budget ran out (the figures are then lower bounds).
  returned: always
  type: bool
"""

import os
import stat
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.layout import efs_root_problem


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(root=dict(type="path", required=True), max_seconds=dict(type="float", default=20)),
        supports_check_mode=True,
    )
    root = module.params["root"]
    problem = efs_root_problem(root)
    if problem:
        module.fail_json(msg=problem)
    deadline = time.time() + module.params["max_seconds"]
    seen: set[tuple[int, int]] = set()
    areas: dict[str, int] = {}
    files = total = 0
    complete = True
    for top in sorted(os.listdir(root)):
        area = 0
        for dirpath, _dirs, names in os.walk(os.path.join(root, top)):
            if time.time() > deadline:
                complete = False
                break
            for name in names:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    files += 1
                    area += st.st_size
        if os.path.isfile(os.path.join(root, top)) and not os.path.islink(os.path.join(root, top)):
            area = os.lstat(os.path.join(root, top)).st_size
            files += 1
        areas[top] = area
        total += area
    module.exit_json(changed=False, bytes=total, files=files, areas=areas, complete=complete)


if __name__ == "__main__":
    main()
