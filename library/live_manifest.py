#!/usr/bin/python
# reefguide-efs: what is live on EFS, remembered in the transfer bucket.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: live_manifest
short_description: Compare a local tree with what is live at an EFS destination, or record a release
description:
  - After each release, stage_data.yml records the manifest of what went live (path, size and
    SHA-256 of every file, and the release id) as a small object in the transfer bucket.
  - V(compared) reads that record and compares it with a local tree, so an identical re-run is
    recognised on the controller before anything is uploaded or the instance is started. Local
    SHA-256s come from the sync engine's checksum cache, so unchanged files are not read again.
  - V(present) records a release; it copies the manifest the push wrote for the run into the record.
  - V(absent) forgets the record (after a rollback, so that the next stage compares nothing and stages).
  - V(pending) marks the record of O(dest) before a release, rollback or removal there, and drops the
    records above and below it that the operation can make untrue (for a release, those the files of
    O(path) reach; otherwise all). V(listed) does the same in its call when given O(key), O(dest) and
    O(release_id) (the mark and the listing a remote part needs, in one task). The mark goes when
    V(present) or V(absent) writes what happened, or
    V(settled) says the operation failed before it touched EFS. A run that ends in between (Ctrl-C,
    the controller killed, the instance stopped) leaves it, and V(compared) never takes a marked record
    for what is live; the next stage compares on the instance, against what EFS holds.
  - V(listed) lists the records under O(prefix) that name their destination, with the fingerprint
    each keeps of its destination's tree on EFS (taken after its release, see C(efs_usage)).
  - V(verified) takes the fingerprints a remote part saw (O(observed)) and drops every record whose
    own differs (EFS was changed by hand since, so the record no longer says what is live there).
  - Runs on the controller.
version_added: "0.1.0"
author: reefguide-efs developers
options:
  state:
    description: V(compared), V(present), V(absent), V(pending), V(settled), V(listed) or V(verified).
    type: str
    choices: [compared, present, absent, pending, settled, listed, verified]
    default: compared
  bucket:
    description: The transfer bucket.
    type: str
    required: true
  key:
    description: The record's key (from stage_request's C(live_manifest_key)); not with V(listed) or V(verified).
    type: str
  prefix:
    description: With V(listed) and V(verified), where the records are filed (C(live_records_prefix)).
    type: str
  fingerprint:
    description: With V(present), the fingerprint of the destination's tree right after the release.
    type: str
  observed:
    description: With V(verified), destination -> the fingerprint its tree has now (C(efs_session)'s C(fingerprints)).
    type: dict
    default: {}
  path:
    description:
      - With V(compared), the local file or directory to compare.
      - With V(pending) (or V(listed) marking) before a release, the local tree the release brings.
    type: path
  mode:
    description:
      - The stage mode. With V(compared), under V(merge) a file live but absent locally is no
        difference (merge keeps it); V(replace) and V(mirror) are equal only to a record of the
        whole destination.
      - With V(present), under V(merge) the record becomes the merged tree (the record before with
        the run's files over it), marked incomplete when there was no record before.
    type: str
    choices: [replace, merge, mirror]
    default: replace
  source_key:
    description: With V(present), the manifest object written by the run's push.
    type: str
  release_id:
    description: With V(present), the release that went live; with V(pending), the run that marks the record.
    type: str
  dest:
    description:
      - The destination the record is for. With V(compared), a record that does not name it (written
        before 0.2, when two destinations could share a key) is not trusted.
      - With V(present) it is written into the record; the records of destinations above it are
        dropped (their tree changed), and those below it that the release changed (all of them for
        V(replace) and V(mirror), those under which the run had files for V(merge)).
      - With V(absent) the records of every destination above and below it are dropped too.
    type: str
  with_files:
    description:
      - With V(compared), also return the local manifest (C(files)) when the record cannot be trusted
        (none, or marked pending by an interrupted run), for a check run's comparison on the instance.
    type: bool
    default: false
  legacy_keys:
    description:
      - Keys the destination's record had in older versions (stage_request's C(legacy_live_manifest_key)).
        They are never read for a comparison (C(/) was written as C(__), so C(a/b) and C(a__b) shared
        one); V(present) and V(absent) delete them.
    type: list
    elements: str
    default: []
extends_documentation_fragment: [reefguide_aws]
"""

EXAMPLES = r"""
- name: Is this data already live?
  live_manifest:
    bucket: "{{ deployment.bucket }}"
    key: "{{ request.live_manifest_key }}"
    path: "{{ request.upload_path }}"
    mode: "{{ request.mode }}"
  delegate_to: localhost
  register: live
"""

RETURN = r"""
files:
  description: With V(compared) and O(with_files), the local manifest, relative path -> [size, SHA-256].
  returned: state=compared and with_files, when no record can be trusted (none, or pending)
  type: dict
equal:
  description: With V(compared), whether the local tree is what is live (nothing to stage).
  returned: state=compared
  type: bool
recorded:
  description: Whether a record exists for the destination.
  returned: always
  type: bool
release_id:
  description: The live release id from the record.
  returned: when recorded
  type: str
pending:
  description: >-
    With V(compared), the run whose release, rollback or removal at the destination was interrupted
    before it wrote what it did (the record is then not taken for what is live), else null.
  returned: state=compared
  type: str
new:
  description: Files present locally but not live (first 20).
  returned: state=compared
  type: list
changed_files:
  description: Files whose size or SHA-256 differ (first 20).
  returned: state=compared
  type: list
removed:
  description: Files live but not local (first 20; not a difference under merge).
  returned: state=compared
  type: list
dropped:
  description: With V(present) or V(absent), the destinations above or below O(dest) whose records were dropped.
  returned: state=present or state=absent
  type: list
records:
  description: With V(listed), each record's C(dest), C(key), C(release_id) and C(fingerprint) (null if it has none).
  returned: state=listed
  type: list
fingerprinted:
  description: With V(listed), the destinations whose records carry a fingerprint (for the remote part).
  returned: state=listed
  type: list
counts:
  description: Numbers of new, changed, removed and unchanged files, and local files and bytes.
  returned: state=compared
  type: dict
"""

import json
from collections.abc import Iterator
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.aws import (
    AWS_COMMON_ARGS,
    client_from_params,
    fail_aws,
    read_json_object,
    require_boto3,
)
from ansible.module_utils.reefguide.checksums import ChecksumCache, default_cache_path, local_sha256
from ansible.module_utils.reefguide.layout import target_key
from ansible.module_utils.reefguide.local_tree import Matcher, scan_source
from ansible.module_utils.reefguide.sync_common import LocalFileError


def read_record(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """The record, {} when there is none or it is unreadable (then the run stages)."""
    try:
        return read_json_object(s3, bucket, key) or {}
    except ValueError:
        return {}


def local_manifest(path: str) -> dict[str, tuple[int, str]]:
    """rel -> (size, sha256), unchanged files' SHA-256 from the checksum cache."""
    files, _empty, _warnings = scan_source(path, Matcher([]))
    cache = ChecksumCache(default_cache_path(path), path)
    out: dict[str, tuple[int, str]] = {}
    for rel, lf in files.items():
        out[rel] = (lf.size, local_sha256(lf, cache)[0])
    return out


def file_in_the_way(s3: Any, bucket: str, key: str, dest: str) -> Optional[tuple[str, str, dict[str, Any]]]:
    """(destination above, path, its record) when the record of the nearest destination above dest
    lists dest, or a directory on the way to it, as a file: a release there would fail on the
    instance, after the upload. A marked record is not trusted either way."""
    parts = dest.split("/")
    prefix = key.rsplit("/", 1)[0] + "/"
    for i in range(len(parts) - 1, 0, -1):
        above = "/".join(parts[:i])
        doc = read_record(s3, bucket, prefix + target_key(above) + ".json")
        if doc.get("dest") != above or doc.get("files") is None:
            continue
        if doc.get("pending"):
            return None
        for j in range(i + 1, len(parts) + 1):
            if "/".join(parts[i:j]) in doc["files"]:
                return above, "/".join(parts[:j]), doc
        return None
    return None


def refuse_a_file_in_the_way(module: AnsibleModule, s3: Any) -> None:
    p = module.params
    found = file_in_the_way(s3, p["bucket"], p["key"], p["dest"]) if p["dest"] else None
    if not found:
        return
    above, path, doc = found
    what = "is" if path == p["dest"] else "lies below"
    module.fail_json(msg=(
        "stage request refused, nothing started: dest %s %s a file, %s, in what is live at %s (release %s); a "
        "stage makes its destination a directory. To replace that file, stage a file of that name into the "
        "directory that holds it, keeping the rest: -e src=<the new %s> -e dest=%s -e mode=merge"
        % (p["dest"], what, path, above, doc.get("release_id"), path.rsplit("/", 1)[1], path.rsplit("/", 1)[0])))


def compare(module: AnsibleModule, s3: Any) -> None:
    p = module.params
    refuse_a_file_in_the_way(module, s3)
    record = read_record(s3, p["bucket"], p["key"])
    if p["dest"] and record.get("dest") != p["dest"]:
        record = {}  # written before 0.2 (or for another destination): never trusted
    try:
        local = local_manifest(p["path"])
    except LocalFileError as exc:
        module.fail_json(msg=str(exc))
    pending = record.get("pending")
    live = {rel: (e.get("size"), e.get("sha256")) for rel, e in (record.get("files") or {}).items()}
    new = sorted(r for r in local if r not in live)
    changed = sorted(r for r in local if r in live and live[r] != local[r])
    # a merge removes nothing; replace and mirror need a record of the whole destination
    removed = [] if p["mode"] == "merge" else sorted(r for r in live if r not in local)
    whole = record.get("complete", True) or p["mode"] == "merge"
    # a marked record: an operation there may have changed EFS after it was written
    recorded = record.get("files") is not None  # a record holding only a mark records nothing
    equal = recorded and whole and not pending and not new and not changed and not removed
    untrusted = not recorded or pending is not None
    extra = {"files": {rel: list(v) for rel, v in local.items()}} if p["with_files"] and untrusted else {}
    module.exit_json(
        changed=False, equal=equal, recorded=recorded, release_id=record.get("release_id"),
        pending=pending, **extra,
        new=new[:20], changed_files=changed[:20], removed=removed[:20],
        counts={"new": len(new), "changed": len(changed), "removed": len(removed),
                "unchanged": len(local) - len(new) - len(changed),
                "local_files": len(local), "local_bytes": sum(s for s, _ in local.values())},
    )


def record(module: AnsibleModule, s3: Any) -> None:
    p = module.params
    if not p["source_key"]:
        module.fail_json(msg="state=present needs source_key (the run's manifest object)")
    try:
        doc = json.loads(s3.get_object(Bucket=p["bucket"], Key=p["source_key"])["Body"].read())
    except Exception as exc:
        fail_aws(module, exc, "reading the run's manifest s3://%s/%s" % (p["bucket"], p["source_key"]))
    doc["release_id"] = p["release_id"]
    if p["fingerprint"]:
        doc["fingerprint"] = p["fingerprint"]
    before = read_record(s3, p["bucket"], p["key"])
    if p["dest"]:
        doc["dest"] = p["dest"]
    doc["mode"] = p["mode"]  # a mirror pulls in place: it leaves no release of its own (related_records)
    if p["mode"] == "merge":
        # what is live is the merged tree: the record before, with this run's files over it; without
        # a record before, what else the destination holds is unknown, so the record says so
        doc["files"] = dict(before.get("files") or {}, **(doc.get("files") or {}))
        doc["complete"] = bool(before) and before.get("complete", True)
    else:
        doc["complete"] = True
    legacy = drop_legacy(module, s3)
    nested = drop_related(module, s3, doc.get("files") or {})
    if all(before.get(k) == doc.get(k) for k in ("files", "release_id", "fingerprint", "mode")) \
            and before.get("complete", True) == doc["complete"] and not before.get("pending"):
        module.exit_json(changed=legacy or bool(nested), recorded=True, release_id=doc["release_id"],
                         dropped=nested)
    if not module.check_mode:
        put_record(module, s3, doc)
    module.exit_json(changed=True, recorded=True, release_id=doc["release_id"], dropped=nested)


def mark(module: AnsibleModule, s3: Any) -> tuple[bool, dict[str, Any], list[str]]:
    """Before an operation at dest: mark its record, and drop the related records it can make untrue
    (for a release, O(path) names the files it brings). (changed, the record before, dropped)."""
    p = module.params
    files = None
    if p["path"]:
        try:
            files = scan_source(p["path"], Matcher([]))[0]
        except LocalFileError as exc:
            module.fail_json(msg=str(exc))
    before = read_record(s3, p["bucket"], p["key"])
    if before.get("dest") != p["dest"]:
        before = {}  # written before 0.2 (or for another destination): replaced by the mark
    doc = dict(before, dest=p["dest"], pending=p["release_id"])
    nested = drop_related(module, s3, files)
    if not module.check_mode and doc != before:
        put_record(module, s3, doc)
    return doc != before or bool(nested), before, nested


def mark_pending(module: AnsibleModule, s3: Any) -> None:
    changed, before, nested = mark(module, s3)
    module.exit_json(changed=changed, recorded=before.get("files") is not None,
                     release_id=before.get("release_id"), pending=module.params["release_id"], dropped=nested)


def settle(module: AnsibleModule, s3: Any) -> None:
    """The operation failed before it touched EFS: the record says what is live again. A mark of
    another run (a later one marked it since) is left alone."""
    p = module.params
    before = read_record(s3, p["bucket"], p["key"])
    if before.get("dest") != p["dest"] or not before.get("pending") or before["pending"] != p["release_id"]:
        module.exit_json(changed=False, recorded=before.get("files") is not None, pending=before.get("pending"))
    doc = {k: v for k, v in before.items() if k != "pending"}
    if not module.check_mode:
        if doc.get("files") is None:  # the mark was all there was
            s3.delete_object(Bucket=p["bucket"], Key=p["key"])
        else:
            put_record(module, s3, doc)
    module.exit_json(changed=True, recorded=doc.get("files") is not None, release_id=doc.get("release_id"),
                     pending=None)


def put_record(module: AnsibleModule, s3: Any, doc: dict[str, Any]) -> None:
    p = module.params
    try:
        s3.put_object(Bucket=p["bucket"], Key=p["key"], Body=json.dumps(doc, sort_keys=True).encode(),
                      ServerSideEncryption="AES256", ContentType="application/json")
    except Exception as exc:
        fail_aws(module, exc, "recording the live manifest s3://%s/%s" % (p["bucket"], p["key"]))


def drop_legacy(module: AnsibleModule, s3: Any) -> bool:
    """Remove records under the destination's pre-0.2 key ('/' as '__': a/b and a__b shared it, so
    such a record may describe another destination). True if one was there."""
    p = module.params
    found = False
    for key in p["legacy_keys"]:
        if key == p["key"] or not read_record(s3, p["bucket"], key):
            continue
        found = True
        if not module.check_mode:
            s3.delete_object(Bucket=p["bucket"], Key=key)
    return found


def records_under(s3: Any, bucket: str, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, record) of every record filed directly under prefix that names its destination (older
    ones are never trusted)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".json") or "/" in obj["Key"][len(prefix):]:
                continue
            doc = read_record(s3, bucket, obj["Key"])
            if doc.get("dest"):
                yield obj["Key"], doc


def listed(module: AnsibleModule, s3: Any) -> None:
    p = module.params
    changed, marked, nested = False, {}, []
    if p["key"] and p["dest"] and p["release_id"]:  # the mark before a remote part, in the same call
        changed, _before, nested = mark(module, s3)
        marked = {"pending": p["release_id"], "dropped": nested}
    records = [{"dest": doc["dest"], "key": key, "release_id": doc.get("release_id"),
                "fingerprint": doc.get("fingerprint"), "mode": doc.get("mode"), "pending": doc.get("pending"),
                "files": len(doc.get("files") or {}),
                "bytes": sum(int(e.get("size") or 0) for e in (doc.get("files") or {}).values())}
               for key, doc in records_under(s3, p["bucket"], p["prefix"])]
    module.exit_json(changed=changed, records=records,
                     fingerprinted=sorted(r["dest"] for r in records if r["fingerprint"]), **marked)


def verified(module: AnsibleModule, s3: Any) -> None:
    """Drop the records whose destination no longer has the fingerprint they keep. A destination the
    remote part did not fingerprint (or a record without one) is left as it is."""
    seen = module.params["observed"] or {}
    stale = {doc["dest"]: key for key, doc in records_under(s3, module.params["bucket"], module.params["prefix"])
             if doc.get("fingerprint") and seen.get(doc["dest"]) not in (None, doc["fingerprint"])}
    dropped = delete_records(module, s3, stale)
    module.exit_json(changed=bool(dropped), dropped=dropped)


def related_records(s3: Any, bucket: str, key: str, dest: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """({dest: key} of the records of destinations above dest, the same for those strictly below
    it, and which of those below are of releases (not of a mirror, which pulls in place)), among the
    records filed beside key. Only records that name their destination count: older ones are never
    trusted (and go when their own destination's record is written)."""
    above: dict[str, str] = {}
    below: dict[str, str] = {}
    released: set[str] = set()
    for other_key, doc in records_under(s3, bucket, key.rsplit("/", 1)[0] + "/"):
        other = doc["dest"]
        if other_key == key or other == dest:
            continue
        if dest.startswith(other + "/"):
            above[other] = other_key
        elif other.startswith(dest + "/"):
            below[other] = other_key
            if doc.get("release_id") and doc.get("mode") != "mirror":
                released.add(other)
    return above, below, released


def delete_records(module: AnsibleModule, s3: Any, records: dict[str, str]) -> list[str]:
    if not module.check_mode:
        for key in records.values():
            s3.delete_object(Bucket=module.params["bucket"], Key=key)
    return sorted(records)


def drop_related(module: AnsibleModule, s3: Any, files: Optional[dict[str, Any]]) -> list[str]:
    """Drop the records that a change at dest made untrue; their next stage compares on the instance.
    Above dest: all of them (their tree now differs from what they recorded). Below it: for a
    release (files given), those it changed: all for replace and mirror (the tree below was made
    equal to src), those under which src had files for a merge, but never those of targets released
    on their own (a release carries them over, a mirror pull leaves them, a src with files inside
    one is refused); for a rollback or a removal (files None), all."""
    p = module.params
    if not p["dest"]:
        return []
    above, below, released = related_records(s3, p["bucket"], p["key"], p["dest"])
    if files is not None:
        below = {other: key for other, key in below.items() if other not in released}
    if files is not None and p["mode"] == "merge":
        below = {other: key for other, key in below.items()
                 if any(rel.startswith(other[len(p["dest"]) + 1:] + "/") for rel in files)}
    return delete_records(module, s3, dict(above, **below))


def forget(module: AnsibleModule, s3: Any) -> None:
    """Drop the record of dest, and those of every destination below it (a rollback or a removal
    changed the whole tree)."""
    p = module.params
    before = read_record(s3, p["bucket"], p["key"])
    if before and not module.check_mode:
        s3.delete_object(Bucket=p["bucket"], Key=p["key"])
    legacy = drop_legacy(module, s3)
    nested = drop_related(module, s3, None)
    module.exit_json(changed=bool(before) or legacy or bool(nested), recorded=False,
                     release_id=before.get("release_id"), dropped=nested)


def main() -> None:
    spec = dict(
        state=dict(type="str", default="compared",
                   choices=["compared", "present", "absent", "pending", "settled", "listed", "verified"]),
        bucket=dict(type="str", required=True),
        key=dict(type="str", no_log=False),
        prefix=dict(type="str"),
        fingerprint=dict(type="str"),
        observed=dict(type="dict", default={}),
        path=dict(type="path"),
        mode=dict(type="str", default="replace", choices=["replace", "merge", "mirror"]),
        source_key=dict(type="str", no_log=False),
        release_id=dict(type="str"),
        legacy_keys=dict(type="list", elements="str", default=[], no_log=False),
        dest=dict(type="str"),
        with_files=dict(type="bool", default=False),
    )
    spec.update(AWS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[("state", "compared", ["path", "key"]), ("state", "present", ["key"]),
                                        ("state", "absent", ["key"]), ("state", "listed", ["prefix"]),
                                        ("state", "pending", ["key", "dest", "release_id"]),
                                        ("state", "settled", ["key", "dest", "release_id"]),
                                        ("state", "verified", ["prefix"])])
    require_boto3(module)
    s3 = client_from_params(module, "s3")
    try:
        if module.params["state"] == "compared":
            compare(module, s3)
        if module.params["state"] == "listed":
            listed(module, s3)
        if module.params["state"] == "verified":
            verified(module, s3)
        if module.params["state"] == "absent":
            forget(module, s3)
        if module.params["state"] == "pending":
            mark_pending(module, s3)
        if module.params["state"] == "settled":
            settle(module, s3)
        record(module, s3)
    except Exception as exc:
        fail_aws(module, exc, "the live manifest s3://%s/%s" % (module.params["bucket"],
                                                                 module.params["key"] or module.params["prefix"]))


if __name__ == "__main__":
    main()
