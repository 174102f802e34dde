# Where things lie on a ReefGuide EFS file system: the workers' data and cache, this tool's
# staging and releases areas, and the key a target's releases are filed under. The one place
# for these facts, so the modules (on the instance and on the controller) cannot disagree.

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Optional

from ansible.module_utils.reefguide.mount_table import mount_at, read_mountinfo
from ansible.module_utils.reefguide.paths import UnsafePathError, safe_relpath

# The workers read data/reefguide and keep their cache in it; the cache must always exist.
WORKERS_ROOT = "data/reefguide"
CACHE = WORKERS_ROOT + "/cache"
# This tool's own areas under the EFS root.
STAGING_DIR = ".reefguide-staging"
RELEASES_DIR = ".reefguide-releases"
# The pull's checksum cache, one file per destination, beside the releases: on EFS it survives a
# replaced instance, and it is read from EFS only once per stage (checksums.py).
CHECKSUMS_DIR = ".reefguide-checksums"
# A target key longer than this many bytes is cut and suffixed with a hash.
MAX_KEY_BYTES = 200


def cache_inside(target_rel: str) -> Optional[str]:
    """The cache's path relative to target_rel when the target holds it
    ('cache' for data/reefguide, 'reefguide/cache' for data), else None
    (a target at or below the cache does not hold it)."""
    if CACHE.startswith(target_rel + "/"):
        return CACHE[len(target_rel) + 1:]
    return None


def seen_by_workers(target_rel: str) -> bool:
    """The workers' root, an ancestor of it or anything below it: running workers may have files
    of its releases open."""
    return holds_workers_root(target_rel) or target_rel.startswith(WORKERS_ROOT + "/")


def holds_workers_root(target_rel: str) -> bool:
    """The workers mount data/reefguide as their volume's root: an NFS mount holds that
    directory itself, not its path. A release of it (or of an ancestor) must keep it."""
    return target_rel == WORKERS_ROOT or WORKERS_ROOT.startswith(target_rel + "/")


def removal_problem(path: str, emptying: bool = False) -> Optional[str]:
    """Why path (normalised, relative to the EFS root) may not be removed, or emptied, else None:
    the workers' root and every directory holding it (running workers lose their mount, new
    worker tasks cannot mount a root that is gone), and their cache with what is in it (it must
    always exist; it alone may be emptied, which is clear_cache)."""
    if path == CACHE or path.startswith(CACHE + "/"):
        if emptying and path == CACHE:
            return None
        if path == CACHE:
            return "%s is the workers' cache, which must always exist: use clear_cache=true to empty it" % CACHE
        return "%s is inside the workers' cache (%s): use clear_cache=true to empty it" % (path, CACHE)
    if holds_workers_root(path):
        return ("%s %s the workers' root (%s), which running workers mount and new worker tasks need: "
                "name what to remove below it, e.g. %s/<name>"
                % (path, "is" if path == WORKERS_ROOT else "holds", WORKERS_ROOT, WORKERS_ROOT))
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


def is_mount_point(path: str) -> bool:
    """From the mount table: os.path.ismount misses a bind mount of the same disk (the lab's EFS)."""
    return mount_at(read_mountinfo(), os.path.realpath(path)) is not None


def efs_root_problem(root: str, must_be_mount: bool = False) -> Optional[str]:
    """Why the modules must not act on root (it is not a directory, so EFS
    is most likely not mounted there; or, when the caller mounted it, it is no
    longer a mount point: what would be written would land on the instance's
    own disk, under EFS's mount point), or None."""
    if not os.path.isdir(root):
        return "EFS root %s is not a directory: is EFS mounted (efs_mount)?" % root
    if must_be_mount and not is_mount_point(root):
        return ("EFS is no longer mounted at %s (unmounted by another run or by hand?): nothing was written "
                "there; run again to mount it and carry on" % root)
    return None


# -- destinations: where a stage, rollback or fetch points, and what it is filed under -----------

# preset -> destination (adria_datapackage: one directory per package below it)
PRESETS = {"reefguide_data": WORKERS_ROOT, "adria_datapackage": WORKERS_ROOT + "/adria/datapackages"}
PACKAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
# S3 keys are at most 1,024 bytes and a file's upload key is the destination's key plus its path.
MAX_DEST_BYTES = 512


class DestinationError(ValueError):
    """A destination the user gave that cannot be used; the message says what to give instead."""


def default_mode(dest: str) -> str:
    """One rule, however the destination is spelled (dest= or preset=): merge for the workers' root and
    what holds it (a src never deletes the rest of the workers' data unasked), replace below it."""
    return "merge" if holds_workers_root(dest) else "replace"


def resolve_destination(dest: Optional[str], preset: Optional[str], package: Optional[str]) -> tuple[str, str]:
    """(destination relative to the EFS root, its default mode) from dest or preset."""
    if dest and preset:
        raise DestinationError("give dest or preset, not both")
    if preset and preset not in PRESETS:
        raise DestinationError("preset %r is not one of %s" % (preset, ", ".join(PRESETS)))
    if preset == "adria_datapackage":
        if not package:
            raise DestinationError("preset adria_datapackage needs package=<name> (e.g. Moore_2025-01-17_v070_rc1)")
        if not PACKAGE_NAME.match(package):
            raise DestinationError("package %r is not a plain name (letters, digits, . _ + -)" % package)
        return PRESETS["adria_datapackage"] + "/" + package, default_mode(PRESETS["adria_datapackage"] + "/" + package)
    if package:
        raise DestinationError("package is only used with preset=adria_datapackage")
    if preset == "reefguide_data":
        return PRESETS["reefguide_data"], default_mode(PRESETS["reefguide_data"])
    if not dest:
        raise DestinationError("say where: dest=<path under the EFS root> or preset=reefguide_data|adria_datapackage")
    if dest.startswith("/"):
        raise DestinationError("dest %r is absolute: give it relative to the EFS root, e.g. data/reefguide/x" % dest)
    if len(os.fsencode(dest)) > MAX_DEST_BYTES:
        raise DestinationError("dest is %d bytes long; at most %d (S3 keys are limited to 1,024 bytes, and each "
                               "file's key is the destination's plus the file's path)"
                               % (len(os.fsencode(dest)), MAX_DEST_BYTES))
    try:
        clean = safe_relpath(dest, "dest")
    except UnsafePathError as exc:
        raise DestinationError(str(exc))
    return clean, default_mode(clean)


def check_allowed(path: str, roots: list[str], what: str = "dest") -> None:
    """path (normalised) lies under one of roots and is not the workers' cache."""
    norm_roots = [safe_relpath(r, "allowed root") for r in roots]
    if not any(path == r or path.startswith(r + "/") for r in norm_roots):
        raise DestinationError("%s %r is outside the allowed roots (%s); set reefguide_allowed_roots in the "
                               "inventory to widen them" % (what, path, ", ".join(norm_roots)))
    if path == CACHE or path.startswith(CACHE + "/"):
        raise DestinationError("%s %s is the workers' cache, which must always exist: use clear_cache=true to "
                               "empty it" % (what, CACHE))


def records_prefix(transfer_prefix: str) -> str:
    """Where the records of what is live are filed in the transfer bucket, one object a destination."""
    return "%s/live/" % safe_relpath(transfer_prefix, "transfer_prefix")


def destination_facts(dest: str, transfer_prefix: str) -> dict[str, Any]:
    """Everything filed under a destination, for the roles and the remote part (which cannot import
    this file): its key (the same percent-encoding as its releases), the upload prefix, the record
    of what is live (and its key before the encoding was made collision-free), the staging area,
    the pull's checksum cache, and where the workers' cache lies inside it."""
    key = target_key(dest)
    prefix = safe_relpath(transfer_prefix, "transfer_prefix")
    return {
        "dest": dest,
        "dest_key": key,
        "run_prefix": "%s/runs/%s/" % (prefix, key),
        "live_manifest_key": "%s%s.json" % (records_prefix(prefix), key),
        "live_records_prefix": records_prefix(prefix),
        # written by versions before 0.2 ('/' as '__', which let a/b and a__b collide): never trusted,
        # removed when the destination's record is next written or dropped
        "legacy_live_manifest_key": "%s/live/%s.json" % (prefix, dest.replace("/", "__")),
        "staging_area": "%s/%s" % (STAGING_DIR, key),
        "staging": "%s/%s/%s" % (STAGING_DIR, key, dest),
        "cache_in_dest": cache_inside(dest),
        "checksum_cache": "%s/%s.json" % (CHECKSUMS_DIR, key),
        "cache": CACHE,
        "staging_root": STAGING_DIR,
    }
