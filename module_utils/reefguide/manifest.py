# The remote side of a sync: the objects under the prefix, and the manifest
# (.reefguide-manifest.json) that a push leaves there with each object's
# SHA-256, so that neither side needs a HEAD or a re-read to compare.

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from ansible.module_utils.reefguide.local_tree import Matcher
from ansible.module_utils.reefguide.paths import UnsafePathError
from ansible.module_utils.reefguide.s3_client import S3Client
from ansible.module_utils.reefguide.sync_common import MANIFEST_NAME, check_relpath, is_sha, parse_s3_time

MANIFEST_FORMAT = "reefguide-s3-sync-manifest"


@dataclass
class RemoteObject:
    rel: str
    key: str
    size: int
    etag: str
    modified: str  # LastModified as listed; parsed only when needed
    sha256: Optional[str] = None
    source_mtime_ns: int = 0  # the pushed file's mtime (manifest or metadata)

    @property
    def mtime_ns(self) -> int:
        return self.source_mtime_ns or parse_s3_time(self.modified)


@dataclass
class RemoteState:
    files: dict[str, RemoteObject] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)  # 'dir/' keys, as 'dir'
    bad: list[str] = field(default_factory=list)  # keys that cannot be stored locally
    manifest: Optional[dict] = None
    manifest_etag: Optional[str] = None
    manifest_dirs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_remote(client: S3Client, prefix: str, excluded: Matcher) -> RemoteState:
    state = RemoteState()
    base = prefix + "/" if prefix else ""
    for key, size, etag, modified in client.list_objects(base):
        rel = key[len(base) :]
        if rel == MANIFEST_NAME:
            state.manifest_etag = etag
            continue
        try:
            if rel.endswith("/"):
                if rel.strip("/"):
                    state.markers.add(check_relpath(rel[:-1], "key"))
                continue
            check_relpath(rel, "key")
        except UnsafePathError as exc:
            state.bad.append("%r: %s" % (key, exc))
            continue
        if excluded(rel):
            continue
        state.files[rel] = RemoteObject(rel, key, size, etag, modified)
    if state.manifest_etag is not None:
        _apply_manifest(client, base + MANIFEST_NAME, state)
    return state


def _apply_manifest(client: S3Client, key: str, state: RemoteState) -> None:
    """Fills in the SHA-256 (and source mtime) of every listed object whose
    size and ETag still match its manifest entry."""
    data = client.get_small(key)
    if data is None:
        return
    try:
        doc = json.loads(data.decode("utf-8"))
        if doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("files"), dict):
            raise ValueError("not a %s" % MANIFEST_FORMAT)
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        state.warnings.append("ignored unreadable manifest %s: %s" % (client.url_for(key), exc))
        return
    state.manifest = doc
    for rel, entry in doc["files"].items():
        obj = state.files.get(rel)
        if not obj or not isinstance(entry, dict):
            continue
        if entry.get("size") == obj.size and entry.get("etag") == obj.etag and is_sha(entry.get("sha256")):
            obj.sha256 = entry["sha256"]
            if isinstance(entry.get("mtime_ns"), int) and entry["mtime_ns"] > 0:
                obj.source_mtime_ns = entry["mtime_ns"]
    for rel in doc.get("dirs") or []:
        try:
            state.manifest_dirs.append(check_relpath(rel, "manifest directory"))
        except (UnsafePathError, TypeError):
            state.bad.append("manifest directory %r" % (rel,))
