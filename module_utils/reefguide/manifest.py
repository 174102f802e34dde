# The remote side of a sync: the objects under the prefix, and the manifest
# (.reefguide-manifest.json) that a push leaves there with each object's
# SHA-256, so that neither side needs a HEAD or a re-read to compare.

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

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
    excluded: list[str] = field(default_factory=list)  # files listed but excluded


def read_remote(client: S3Client, prefix: str, excluded: Matcher) -> RemoteState:
    """The objects under prefix, with the SHA-256s the manifest still vouches for."""
    base = prefix + "/" if prefix else ""
    state = state_from_listing(client.list_objects(base), base, excluded)
    if state.manifest_etag is not None:
        _apply_manifest(client, base + MANIFEST_NAME, state)
    return state


def state_from_listing(
    listing: Iterable[tuple[str, int, str, str]], base: str, excluded: Callable[[str], bool]
) -> RemoteState:
    """A RemoteState from (key, size, etag, LastModified) rows listed under
    base: files by relative path, 'dir/' markers, the manifest's ETag, and
    keys that cannot be stored locally."""
    state = RemoteState()
    for key, size, etag, modified in listing:
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
            state.excluded.append(rel)
            continue
        state.files[rel] = RemoteObject(rel, key, size, etag, modified)
    return state


# What parse_manifest() raises for a document it cannot use (the warning quotes it).
UNREADABLE = (ValueError, AttributeError, UnicodeDecodeError)


def parse_manifest(data: bytes) -> dict[str, Any]:
    """The manifest document in data; raises one of UNREADABLE when it is not one."""
    doc = json.loads(data.decode("utf-8"))
    if doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("files"), dict):
        raise ValueError("not a %s" % MANIFEST_FORMAT)
    return doc


def _apply_manifest(client: S3Client, key: str, state: RemoteState) -> None:
    data = client.get_small(key)
    if data is None:
        return
    try:
        doc = parse_manifest(data)
    except UNREADABLE as exc:
        state.warnings.append("ignored unreadable manifest %s: %s" % (client.url_for(key), exc))
        return
    apply_manifest_doc(doc, state)


def apply_manifest_doc(doc: dict[str, Any], state: RemoteState) -> None:
    """Fills in the SHA-256 (and source mtime) of every listed object whose
    size and ETag still match its manifest entry, and the directories it lists."""
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


def manifest_doc(
    remote: RemoteState,
    uploaded: dict[str, tuple[str, str, int, int]],
    empty_dirs: list[str],
    deleted: set[str],
    keep_dirs: bool,
) -> Optional[dict[str, Any]]:
    """The manifest after a push, or None when it would not change. It lists
    every object under the prefix whose SHA-256 is known (uploaded: rel ->
    sha256, etag, size, mtime_ns), keyed by relative path, with the ETag it
    was computed for (a reader trusts an entry only while size and ETag still
    match), and the empty directories; keep_dirs (merge) keeps those it had."""
    entries: dict[str, dict] = {}
    for rel, obj in remote.files.items():
        if obj.sha256 and rel not in deleted and rel not in uploaded:
            entries[rel] = {"size": obj.size, "sha256": obj.sha256, "etag": obj.etag, "mtime_ns": obj.mtime_ns}
    for rel, (sha, etag, size, mtime_ns) in uploaded.items():
        entries[rel] = {"size": size, "sha256": sha, "etag": etag, "mtime_ns": mtime_ns}
    dirs = sorted(set(empty_dirs))
    if keep_dirs and remote.manifest:
        dirs = sorted(set(dirs) | set(remote.manifest_dirs))
    old = remote.manifest or {}
    if old.get("files") == entries and sorted(old.get("dirs") or []) == dirs:
        return None
    return {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": entries,
        "dirs": dirs,
    }


def manifest_body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
