#!/usr/bin/python
# reefguide-efs: check a stage request before anything is touched.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: stage_request
short_description: Validate and resolve what stage_data.yml was asked to do
description:
  - Checks O(src), O(dest) or O(preset), O(mode) before anything is started, uploaded or changed,
    and resolves them into the paths the rest of the run uses.
  - A C(.zip), C(.tar.gz) or C(.tgz) O(src) is unpacked on the controller into O(unpack_dir)
    (names checked first; no absolute paths, no C(..), no links leaving the archive) so that it is
    staged, verified and released file by file like a directory.
  - Runs on the controller. Changes nothing but O(unpack_dir).
version_added: "0.1.0"
author: reefguide-efs developers
options:
  src:
    description: Local file, directory or archive to stage.
    type: path
    required: true
  dest:
    description:
      - Destination relative to the EFS root, e.g. C(data/reefguide/criteria). Mutually exclusive
        with O(preset).
    type: str
  preset:
    description:
      - V(reefguide_data) stages into C(data/reefguide) (the workers' root; default O(mode) V(merge),
        so data packages and the cache already there stay).
      - V(adria_datapackage) stages into C(data/reefguide/adria/datapackages/<package>) (default
        O(mode) V(replace)).
    type: str
    choices: [reefguide_data, adria_datapackage]
  package:
    description: Data package name for O(preset=adria_datapackage), one path component.
    type: str
  mode:
    description:
      - V(replace) makes the destination exactly O(src), released in one step; the previous
        version is kept for rollback.
      - V(merge) adds and overwrites O(src)'s files in the destination, keeps the rest, released
        in one step with the previous version kept.
      - V(mirror) syncs the destination in place to equal O(src) (extra files deleted); no staging
        copy and no rollback, each file replaced atomically but workers may see a mix while it runs.
      - Default V(merge) for O(preset=reefguide_data), V(replace) otherwise.
    type: str
    choices: [replace, merge, mirror]
  allowed_roots:
    description: Destinations must lie under one of these (relative to the EFS root).
    type: list
    elements: str
    default: [data/reefguide]
  unpack_dir:
    description: Controller directory an archive O(src) is unpacked into (created, emptied first).
    type: path
  keep:
    description: Previous releases to keep (checked here, a whole number, 0 or more; returned as a number).
    type: raw
    default: 2
  upload_concurrency:
    description: Parallel transfers of the upload (checked here, 1-256).
    type: raw
    default: 16
  pull_concurrency:
    description: Parallel transfers of the pull on the instance (checked here, 1-256).
    type: raw
    default: 16
  run_id:
    description: Identifies this run; names its transfer prefix and staging directory.
    type: str
    required: true
  transfer_prefix:
    description: Top-level prefix of reefguide-efs objects in the transfer bucket.
    type: str
    default: reefguide-efs
"""

EXAMPLES = r"""
- name: Check the request
  stage_request:
    src: ./Moore_2025-01-17_v070_rc1
    preset: adria_datapackage
    package: Moore_2025-01-17_v070_rc1
    run_id: "{{ reefguide_run_id }}"
  delegate_to: localhost
  register: request
"""

RETURN = r"""
upload_path:
  description: The local file or directory to upload (the unpacked tree for an archive).
  returned: success
  type: str
src_kind:
  description: V(file), V(directory) or V(archive).
  returned: success
  type: str
dest:
  description: The destination, normalised, relative to the EFS root.
  returned: success
  type: str
dest_key:
  description:
    - The destination's name in the transfer bucket and the releases area, with C(%) and C(/)
      percent-encoded, so that distinct destinations never share one (e.g. C(data%2Freefguide)).
  returned: success
  type: str
mode:
  description: The mode in force.
  returned: success
  type: str
run_prefix:
  description:
    - The transfer-bucket prefix the upload goes to (ends with '/'), one per destination, so a
      re-run after a failure finds what was already uploaded and sends only the rest. Deleted
      after a successful stage; kept after a failed one (teardown.yml removes it).
  returned: success
  type: str
live_manifest_key:
  description: Object key of the manifest of what is live at O(dest), written after each release.
  returned: success
  type: str
legacy_live_manifest_key:
  description:
    - Where versions before 0.2 kept that record (C(/) as C(__), so C(a/b) and C(a__b) shared it).
      Never trusted; removed when the destination's record is next written or dropped.
  returned: success
  type: str
staging_area:
  description: The destination's area under C(.reefguide-staging), removed after its release.
  returned: success
  type: str
cache_in_dest:
  description:
    - The workers' cache's path relative to O(dest) when O(dest) holds it (C(cache) for
      C(data/reefguide)), else null.
  returned: success
  type: str
cache:
  description: The workers' cache relative to the EFS root (C(data/reefguide/cache)).
  returned: success
  type: str
staging_root:
  description: This tool's staging directory at the EFS root.
  returned: success
  type: str
keep:
  description: O(keep) as a number.
  returned: success
  type: int
upload_concurrency:
  description: O(upload_concurrency) as a number.
  returned: success
  type: int
pull_concurrency:
  description: O(pull_concurrency) as a number.
  returned: success
  type: int
staging:
  description:
    - The staging directory, relative to the EFS root, one per destination (C(.reefguide-staging/<dest_key>/<dest>)),
      so a re-run after a failed pull resumes in it (replace mode) and pulls only what is missing.
  returned: success
  type: str
"""

import os
import shutil
import stat
import tarfile
import zipfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.inputs import InputError, whole_number
from ansible.module_utils.reefguide.layout import (
    PRESETS,
    DestinationError,
    check_allowed,
    destination_facts,
    resolve_destination,
)
from ansible.module_utils.reefguide.paths import UnsafePathError, safe_relpath

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")


class RequestError(ValueError):
    pass


def archive_kind(path: str) -> str:
    low = path.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if low.endswith(suffix):
            return suffix
    return ""


def unpack(src: str, into: str) -> None:
    """Unpack after checking every member; nothing is written for a bad archive."""
    if os.path.isdir(into):
        shutil.rmtree(into)
    os.makedirs(into)
    if src.lower().endswith(".zip"):
        with zipfile.ZipFile(src) as zf:
            for info in zf.infolist():
                safe_relpath(info.filename.rstrip("/"), "archive member")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise RequestError("archive member %r is a symlink: not staged" % info.filename)
            zf.extractall(into)
        return
    with tarfile.open(src, "r:gz") as tf:
        members = tf.getmembers()
        for m in members:
            safe_relpath(m.name.rstrip("/"), "archive member")
            if not (m.isfile() or m.isdir()):
                raise RequestError("archive member %r is not a plain file or directory: not staged" % m.name)
        tf.extractall(into, members=members, filter="data")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest=dict(type="str"),
            preset=dict(type="str", choices=list(PRESETS)),
            package=dict(type="str"),
            mode=dict(type="str", choices=["replace", "merge", "mirror"]),
            allowed_roots=dict(type="list", elements="str", default=["data/reefguide"]),
            unpack_dir=dict(type="path"),
            run_id=dict(type="str", required=True),
            transfer_prefix=dict(type="str", default="reefguide-efs"),
            keep=dict(type="raw", default=2),
            upload_concurrency=dict(type="raw", default=16),
            pull_concurrency=dict(type="raw", default=16),
        ),
        supports_check_mode=True,
    )
    p = module.params
    src = p["src"]
    try:
        if not os.path.lexists(src):
            raise RequestError("src %s does not exist (relative paths are from %s)" % (src, os.getcwd()))
        if not os.access(src, os.R_OK):
            raise RequestError("src %s is not readable by %s" % (src, os.getuid()))
        numbers = {"keep": whole_number(p["keep"], "keep", 0),
                   "upload_concurrency": whole_number(p["upload_concurrency"], "reefguide_upload_concurrency", 1, 256),
                   "pull_concurrency": whole_number(p["pull_concurrency"], "reefguide_pull_concurrency", 1, 256)}
        dest, default_mode = resolve_destination(p["dest"], p["preset"], p["package"])
        check_allowed(dest, p["allowed_roots"])
        run_id = safe_relpath(p["run_id"], "run_id")
        if "/" in run_id:
            raise RequestError("run_id %r must be one path component" % run_id)
        kind, upload_path = "directory", src
        if os.path.isfile(src) and archive_kind(src):
            if not p["unpack_dir"]:
                raise RequestError("an archive src needs unpack_dir")
            kind, upload_path = "archive", p["unpack_dir"]
            try:
                unpack(src, upload_path)
            except (UnsafePathError, tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
                raise RequestError("archive %s cannot be staged: %s" % (src, exc))
        elif os.path.isfile(src):
            kind = "file"
        elif not os.path.isdir(src):
            raise RequestError("src %s is neither a file nor a directory" % src)
        elif not os.listdir(src):
            raise RequestError("src %s is an empty directory: nothing to stage" % src)
    except (RequestError, DestinationError, InputError, UnsafePathError) as exc:
        module.fail_json(msg="stage request refused, nothing started: %s" % exc)

    facts = destination_facts(dest, p["transfer_prefix"])
    module.exit_json(changed=False, upload_path=upload_path, src_kind=kind, mode=p["mode"] or default_mode,
                     **dict(facts, **numbers))


if __name__ == "__main__":
    main()
