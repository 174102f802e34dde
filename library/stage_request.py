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
  - A C(.zip), C(.tar.gz) or C(.tgz) O(src) is unpacked on the controller into a private directory
    (O(unpack_dir), or a new one per run) so that it is staged, verified and released file by file
    like a directory. Its index is read first, before anything is written - every member must be a
    regular file or a directory with a relative path (a C(.) member is the root itself; absolute
    paths, C(..), links, devices and FIFOs are refused) and the declared sizes must stay within
    O(max_unpacked_bytes) and the members within O(max_members); while writing, a member that holds
    more or fewer bytes than its header declares stops the unpack. On any failure what was unpacked
    is removed.
  - A O(src) that holds no regular file (only FIFOs, sockets, devices, empty directories) is refused.
  - Runs on the controller. Changes nothing but the unpack directory, which the caller removes at
    the end of the run (RV(upload_path) when RV(src_kind) is V(archive)).
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
    description:
      - Controller directory an archive O(src) is unpacked into. It must not exist yet (it is created,
        mode 0700); one that exists, even empty, is refused and left as it is.
      - Default a new private directory in C($TMPDIR), C(reefguide-efs-unpack-<run_id>-XXXXXXXX).
    type: path
  max_unpacked_bytes:
    description:
      - An archive O(src) whose members add up to more bytes than this (from its index) is refused before
        anything is written. Set by the role variable C(reefguide_archive_max_bytes).
    type: int
    default: 107374182400
  max_members:
    description:
      - An archive O(src) with more members (files and directories) than this is refused before anything
        is written. Set by the role variable C(reefguide_archive_max_files).
    type: int
    default: 1000000
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
live_records_prefix:
  description: Where the records of every destination are filed (C(live_manifest) state=listed).
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
checksum_cache:
  description:
    - The pull's checksum cache for O(dest), relative to the EFS root (C(.reefguide-checksums/<dest_key>.json)).
      It is on EFS, so it survives a replaced instance.
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

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.archives import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MEMBERS,
    ArchiveError,
    archive_kind,
    check_has_regular_file,
    describe_special,
    unpack,
)
from ansible.module_utils.reefguide.inputs import InputError, whole_number
from ansible.module_utils.reefguide.layout import (
    CACHE,
    PRESETS,
    DestinationError,
    cache_inside,
    check_allowed,
    destination_facts,
    resolve_destination,
)
from ansible.module_utils.reefguide.paths import UnsafePathError, safe_relpath


class RequestError(ValueError):
    pass


def check_no_cache(tree: str, dest: str, src: str) -> None:
    """The workers' cache is theirs: every stage keeps it as it is, so a src that has an entry where
    it lies would fail at the release, after the upload and the instance start."""
    inside = cache_inside(dest)
    if inside and os.path.lexists(os.path.join(tree, inside)):
        raise RequestError(
            "src %s has %r, which lands on the workers' cache (EFS:%s) when staged to %s: every stage keeps "
            "the cache as it is (the workers fill it; clear_cache=true empties it). Remove %r from src, "
            "or stage into a destination below %s" % (src, inside, CACHE, dest, inside, CACHE.rsplit("/", 1)[0]))


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
            max_unpacked_bytes=dict(type="int", default=DEFAULT_MAX_BYTES),
            max_members=dict(type="int", default=DEFAULT_MAX_MEMBERS),
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
        # everything that can refuse the request comes before the unpack, which writes
        facts = destination_facts(dest, p["transfer_prefix"])
        kind, upload_path = "directory", src
        if os.path.isfile(src) and archive_kind(src):
            kind = "archive"
            upload_path = unpack(src, p["unpack_dir"], run_id, p["max_unpacked_bytes"], p["max_members"])
            try:
                check_no_cache(upload_path, dest, src)
            except RequestError:
                shutil.rmtree(upload_path, ignore_errors=True)  # this call made it (unpack refuses an existing one)
                raise
        elif os.path.isfile(src):
            kind = "file"
        elif not os.path.isdir(src):
            raise RequestError(describe_special(src))
        else:
            check_has_regular_file(src)
            check_no_cache(src, dest, src)
    except (RequestError, DestinationError, InputError, UnsafePathError, ArchiveError) as exc:
        module.fail_json(msg="stage request refused, nothing started: %s" % exc)

    module.exit_json(changed=False, upload_path=upload_path, src_kind=kind, mode=p["mode"] or default_mode,
                     **dict(facts, **numbers))


if __name__ == "__main__":
    main()
