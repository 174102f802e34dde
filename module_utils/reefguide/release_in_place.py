# The in-place swap's file steps: the live directory stays (the workers hold it by handle:
# it is their EFS volume's root directory) and its contents become the incoming version's, entry by entry,
# each in one rename. What to do is planned in release_plan.in_place_plan; this file does it.
# NFS (EFS) has no renameat2, so nothing here needs RENAME_EXCHANGE.

from __future__ import annotations

import os
import shutil
from typing import Callable, Optional

from ansible.module_utils.reefguide.fs import clone, rel_join, tree_entries
from ansible.module_utils.reefguide.release_plan import in_place_leaving, in_place_plan

# Under the target's releases directory (a dot name is never taken for a release): where a
# file is linked and a new directory prepared before it is renamed into the live tree, so
# nothing half-made ever shows in what the workers read.
IN_PLACE_TMP = ".in-place"


def swap_contents(target: str, incoming: str, retire_to: str, tmp_dir: str, stays: list[str],
                  copied: Optional[Callable[[], None]] = None) -> int:
    """Make target's contents incoming's, keeping the previous version at
    retire_to (a hard-link copy, plus the entries that leave). copied: called
    once that copy is complete, before target changes (the journal's next
    phase); None when the copy exists already (a repeat after a crash: every
    step is idempotent against the same incoming). Returns the steps done."""
    ops = in_place_plan(tree_entries(target, stays), tree_entries(incoming, stays), stays)
    if copied is not None:
        clone(target, retire_to, set(stays) | set(in_place_leaving(ops)))
        copied()
    apply_steps(target, incoming, retire_to, tmp_dir, ops)
    return len(ops)


def apply_steps(target: str, incoming: str, retire_to: str, tmp_dir: str, ops: list[tuple[str, str]]) -> None:
    os.makedirs(tmp_dir, exist_ok=True)
    for step, rel in ops:
        live_path, new_path = rel_join(target, rel), rel_join(incoming, rel)
        if step == "meta":
            st = os.lstat(new_path)
            os.chown(live_path, st.st_uid, st.st_gid)
            os.chmod(live_path, st.st_mode & 0o7777)
        elif step == "move_out":
            os.rename(live_path, rel_join(retire_to, rel))
        elif step == "link_in":
            tmp = fresh(os.path.join(tmp_dir, "file"))
            os.link(new_path, tmp, follow_symlinks=False)
            os.rename(tmp, live_path)  # replaces the old file in one step: readers see one or the other
        else:
            tmp = fresh(os.path.join(tmp_dir, "dir"))
            clone(new_path, tmp, set())
            os.rename(tmp, live_path)
    shutil.rmtree(tmp_dir)


def fresh(path: str) -> str:
    """path, with whatever an interrupted run left there removed."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    return path
