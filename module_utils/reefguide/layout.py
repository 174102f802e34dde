# Where things lie on a ReefGuide EFS file system: the workers' data and cache, this tool's
# staging and releases areas, and the key a target's releases are filed under. The one place
# for these facts, so the modules (on the instance and on the controller) cannot disagree.

from __future__ import annotations

import hashlib
import os
from typing import Optional

from ansible.module_utils.reefguide.paths import safe_relpath

# The workers read data/reefguide and keep their cache in it; the cache must always exist.
WORKERS_ROOT = "data/reefguide"
CACHE = WORKERS_ROOT + "/cache"
# This tool's own areas under the EFS root.
STAGING_DIR = ".reefguide-staging"
RELEASES_DIR = ".reefguide-releases"
# A target key longer than this many bytes is cut and suffixed with a hash.
MAX_KEY_BYTES = 200


def cache_inside(target_rel: str) -> Optional[str]:
    """The cache's path relative to target_rel when the target holds it
    ('cache' for data/reefguide, 'reefguide/cache' for data), else None
    (a target at or below the cache does not hold it)."""
    if CACHE.startswith(target_rel + "/"):
        return CACHE[len(target_rel) + 1:]
    return None


def default_preserve(target_rel: str) -> list[str]:
    """What a release of target_rel carries over unless told otherwise: the cache, if inside."""
    cache = cache_inside(target_rel)
    return [cache] if cache else []


def target_key(target: str) -> str:
    """Directory name of a target's releases: the target path with '%'
    and '/' percent-encoded (so distinct targets never share a name, e.g.
    'data/reefguide' -> 'data%2Freefguide'). Over-long names are cut and
    suffixed with a hash."""
    key = safe_relpath(target, "target").replace("%", "%25").replace("/", "%2F")
    if len(os.fsencode(key)) > MAX_KEY_BYTES:
        digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:16]
        key = os.fsdecode(os.fsencode(key)[:150]).rstrip("%") + "~" + digest
    return key


def key_to_target(key: str) -> str:
    """The target a key was made from (exact for keys that were not cut;
    a cut key's history.json names its target)."""
    return key.replace("%2F", "/").replace("%25", "%")


def efs_root_problem(root: str) -> Optional[str]:
    """Why the modules must not act on root (it is not a directory, so EFS
    is most likely not mounted there), or None."""
    if os.path.isdir(root):
        return None
    return "EFS root %s is not a directory: is EFS mounted (efs_mount)?" % root
