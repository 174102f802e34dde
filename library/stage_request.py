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
  description: A flat name for the destination, used for its live manifest.
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
staging:
  description:
    - The staging directory, relative to the EFS root, one per destination (C(.reefguide-staging/<dest_key>/<dest>)),
      so a re-run after a failed pull resumes in it (replace mode) and pulls only what is missing.
  returned: success
  type: str
"""

import os
import re

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
from ansible.module_utils.reefguide.layout import CACHE
from ansible.module_utils.reefguide.paths import UnsafePathError, safe_relpath

PRESETS = {"reefguide_data": "data/reefguide", "adria_datapackage": "data/reefguide/adria/datapackages"}
PACKAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


class RequestError(ValueError):
    pass


def resolve_dest(p: dict) -> tuple[str, str]:
    """(dest, default mode) from dest or preset."""
    if p["dest"] and p["preset"]:
        raise RequestError("give dest or preset, not both")
    if p["preset"] == "adria_datapackage":
        pkg = p["package"]
        if not pkg:
            raise RequestError("preset adria_datapackage needs package=<name> (e.g. Moore_2025-01-17_v070_rc1)")
        if not PACKAGE_NAME.match(pkg):
            raise RequestError("package %r is not a plain name (letters, digits, . _ + -)" % pkg)
        return PRESETS["adria_datapackage"] + "/" + pkg, "replace"
    if p["package"]:
        raise RequestError("package is only used with preset=adria_datapackage")
    if p["preset"] == "reefguide_data":
        return PRESETS["reefguide_data"], "merge"
    if not p["dest"]:
        raise RequestError("say where to stage: dest=<path under the EFS root> or preset=reefguide_data|"
                           "adria_datapackage")
    if p["dest"].startswith("/"):
        raise RequestError("dest %r is absolute: give it relative to the EFS root, e.g. data/reefguide/x"
                           % p["dest"])
    try:
        return safe_relpath(p["dest"].rstrip("/"), "dest"), "replace"
    except UnsafePathError as exc:
        raise RequestError(str(exc))


def check_allowed(dest: str, roots: list[str]) -> None:
    norm_roots = [safe_relpath(r, "allowed root") for r in roots]
    if not any(dest == r or dest.startswith(r + "/") for r in norm_roots):
        raise RequestError("dest %r is outside the allowed roots (%s); set reefguide_allowed_roots in the "
                           "inventory to widen them" % (dest, ", ".join(norm_roots)))
    if dest == CACHE or dest.startswith(CACHE + "/"):
        raise RequestError("%s is the workers' cache, not a destination: use clear_cache=true to empty it" % CACHE)


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
        dest, default_mode = resolve_dest(p)
        check_allowed(dest, p["allowed_roots"])
        run_id = safe_relpath(p["run_id"], "run_id")
        if "/" in run_id:
            raise RequestError("run_id %r must be one path component" % run_id)
        kind, upload_path = "directory", src
        if os.path.isfile(src) and archive_kind(src):
            kind = "archive"
            upload_path = unpack(src, p["unpack_dir"], run_id, p["max_unpacked_bytes"], p["max_members"])
        elif os.path.isfile(src):
            kind = "file"
        elif not os.path.isdir(src):
            raise RequestError(describe_special(src))
        else:
            check_has_regular_file(src)
    except (RequestError, UnsafePathError, ArchiveError) as exc:
        module.fail_json(msg="stage request refused, nothing started: %s" % exc)

    prefix = safe_relpath(p["transfer_prefix"], "transfer_prefix")
    dest_key = dest.replace("/", "__")
    module.exit_json(
        changed=False,
        upload_path=upload_path,
        src_kind=kind,
        dest=dest,
        dest_key=dest_key,
        mode=p["mode"] or default_mode,
        run_prefix="%s/runs/%s/" % (prefix, dest_key),
        live_manifest_key="%s/live/%s.json" % (prefix, dest_key),
        staging=".reefguide-staging/%s/%s" % (dest_key, dest),
    )


if __name__ == "__main__":
    main()
