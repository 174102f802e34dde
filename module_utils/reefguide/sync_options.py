# The options of one sync run and their checks: what the s3_sync module and
# the command line both fill in.

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

from ansible.module_utils.reefguide.sync_common import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    SyncError,
)


@dataclass
class SyncOptions:
    direction: str  # push | pull
    bucket: str
    path: str
    prefix: str = ""
    mode: str = "merge"  # merge | mirror
    concurrency: int = DEFAULT_CONCURRENCY
    part_size: int = DEFAULT_PART_SIZE
    sse: Optional[str] = "AES256"  # AES256 | aws:kms | None
    sse_kms_key_id: Optional[str] = None
    exclude: list[str] = field(default_factory=list)
    # pull: paths below the destination left exactly as they are (targets released on their own):
    # never deleted or written, and a source holding anything there is refused
    keep: list[str] = field(default_factory=list)
    checksum_cache: Optional[str] = None  # None: a file under ~/.cache/reefguide-efs
    use_checksum_cache: bool = True
    rehash: bool = False
    progress_file: Optional[str] = None
    progress_interval: float = 2.0
    max_delete: Optional[int] = None
    dry_run: bool = False
    region: Optional[str] = None
    profile: Optional[str] = None
    endpoint_url: Optional[str] = None
    max_attempts: int = 10
    list_limit: int = 20


def validate_options(o: SyncOptions) -> None:
    """Raises SyncError for an option out of range, or a non-UTF-8 file system encoding."""
    if o.direction not in ("push", "pull"):
        raise SyncError("direction must be push or pull, not %r" % o.direction)
    if o.mode not in ("merge", "mirror"):
        raise SyncError("mode must be merge or mirror, not %r" % o.mode)
    if o.keep and o.direction != "pull":
        raise SyncError("keep is for pulls (paths of the destination left as they are)")
    if not o.bucket or "/" in o.bucket:
        raise SyncError("bucket %r is not a bucket name (give the key part as prefix)" % o.bucket)
    if not 1 <= o.concurrency <= 256:
        raise SyncError("concurrency must be between 1 and 256, not %d" % o.concurrency)
    if o.part_size < MIN_PART_SIZE:
        raise SyncError("part_size must be at least 5 MiB (S3's minimum part size), not %d" % o.part_size)
    if o.part_size > MAX_PART_SIZE:
        raise SyncError("part_size must be at most 5 GiB (S3's maximum part size), not %d" % o.part_size)
    if o.sse not in (None, "AES256", "aws:kms"):
        raise SyncError("sse must be AES256, aws:kms or none, not %r" % o.sse)
    if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
        raise SyncError("the file system encoding is %s; run with a UTF-8 locale" % sys.getfilesystemencoding())
