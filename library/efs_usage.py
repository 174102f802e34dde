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
  - With O(fingerprint), the same walk also takes the fingerprint of each destination named (its
    tree's paths, sizes, mtimes and inodes, the workers' cache left out). The record of what is live
    keeps the one taken after the release, so a later run notices a hand edit on EFS.
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
  fingerprint:
    description: Destinations (relative to O(root)) to fingerprint during the walk.
    type: list
    elements: str
    default: []
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
  description: >-
    Bytes per top-level entry of the root (e.g. data, .reefguide-releases, .reefguide-staging); a file
    hard-linked from several counts once, to the first of them, what is live (the entries not starting
    with a dot) first.
  returned: always
  type: dict
complete:
  description: False when the time budget ran out (the figures are then lower bounds).
  returned: always
  type: bool
fingerprints:
  description:
    - Destination -> its fingerprint (C(absent) when it is not a directory), for each of
      O(fingerprint); empty when the walk did not complete (no fingerprint is better than a wrong one).
  returned: always
  type: dict
"""

import os
import stat
import time
from typing import Optional

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.detached_job import mark_began
from ansible.module_utils.reefguide.fingerprint import Fingerprints
from ansible.module_utils.reefguide.layout import cache_inside, efs_root_problem
from ansible.module_utils.reefguide.paths import safe_relpath


class Walk:
    """One walk of the EFS root: bytes per top-level area (hard links once) and fingerprints."""

    def __init__(self, root: str, deadline: float, prints: Fingerprints) -> None:
        self.root, self.deadline, self.prints = root, deadline, prints
        self.seen: set[tuple[int, int]] = set()
        self.files = 0
        self.complete = True

    def entry(self, path: str) -> int:
        """Note one entry; the bytes it adds (a regular file not seen before)."""
        try:
            st = os.lstat(path)
        except OSError:
            return 0
        rel = os.path.relpath(path, self.root)
        target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
        self.prints.add(rel, st, target)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in self.seen:
            return 0
        self.seen.add((st.st_dev, st.st_ino))
        self.files += 1
        return st.st_size

    def area(self, top: str) -> int:
        size = self.entry(os.path.join(self.root, top))
        for dirpath, dirs, names in os.walk(os.path.join(self.root, top)):
            if time.time() > self.deadline:
                self.complete = False
                break
            for name in names + dirs:
                size += self.entry(os.path.join(dirpath, name))
        return size


def fingerprints_wanted(dests: list[str]) -> tuple[list[str], dict[str, Optional[str]]]:
    clean = sorted({safe_relpath(d, "fingerprint") for d in dests})
    return clean, {d: cache_inside(d) for d in clean}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(root=dict(type="path", required=True), max_seconds=dict(type="float", default=20),
                           fingerprint=dict(type="list", elements="str", default=[])),
        supports_check_mode=True,
    )
    mark_began(module)  # before any work: a job lost before this is started again
    root = module.params["root"]
    problem = efs_root_problem(root)
    if problem:
        module.fail_json(msg=problem)
    try:
        dests, excluded = fingerprints_wanted(module.params["fingerprint"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    walk = Walk(root, time.time() + module.params["max_seconds"], Fingerprints(dests, excluded))
    # what is live first: a file hard-linked from a kept release or a staging copy counts once, to the
    # live tree (sorted by name, .reefguide-releases came first and took the credit for live files)
    areas = {top: walk.area(top) for top in sorted(os.listdir(root), key=lambda name: (name.startswith("."), name))}
    prints = walk.prints.digests(root) if walk.complete else {}
    module.exit_json(changed=False, bytes=sum(areas.values()), files=walk.files, areas=areas,
                     complete=walk.complete, fingerprints=prints)


if __name__ == "__main__":
    main()
