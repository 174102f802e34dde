# What a sync will do, decided from the two listings before anything moves:
# files to transfer, entries to delete, files unchanged. No I/O here, so the
# rules can be tested without S3 (tests/test_sync_plan.py).

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ansible.module_utils.reefguide.sync_common import IN_MEMORY_MAX, SyncError


@dataclass
class Plan:
    transfer: list[tuple[str, int]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    delete_bytes: int = 0
    skip_files: int = 0
    skip_bytes: int = 0
    dirs_create: list[str] = field(default_factory=list)
    dirs_remove: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)


def check_max_delete(plan: Plan, limit: Optional[int]) -> None:
    """Refuses a mirror that would delete more than limit entries (a wrong path or prefix)."""
    if limit is not None and limit >= 0 and len(plan.delete) > limit:
        raise SyncError(
            "mode=mirror would delete %d entries, more than max_delete=%d (first: %s); "
            "check path and prefix, or raise max_delete"
            % (len(plan.delete), limit, ", ".join(plan.delete[:5]))
        )


def spread_over_dirs(objs: list[Any]) -> list[Any]:
    """Biggest first (long transfers start early), then the small files taken
    from each directory in turn: workers creating and renaming files in one
    directory queue on its lock; spread over many, they do not."""
    big = sorted((o for o in objs if o.size > IN_MEMORY_MAX), key=lambda o: -o.size)
    by_dir: dict[str, list[Any]] = {}
    for o in objs:
        if o.size <= IN_MEMORY_MAX:
            by_dir.setdefault(o.rel.rpartition("/")[0], []).append(o)
    queues = list(by_dir.values())
    small = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return big + small
