#!/usr/bin/python
# reefguide-efs: check what teardown.yml or rollback.yml was asked to do, before anything starts.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_request
short_description: Validate and resolve what teardown.yml or rollback.yml was asked to do
description:
  - Checks the user's input on the controller before the lock is taken or the instance started,
    with the same rules as stage_request (module_utils/reefguide/inputs.py and layout.py), and
    returns the EFS layout facts the later steps need (the remote part cannot import them).
  - V(rollback) resolves O(dest) or O(preset) (and O(package)) exactly as a stage does, checks it
    against O(allowed_roots), and checks O(release_id).
  - V(teardown) checks O(keep) and that O(remove) is a list of paths under O(allowed_roots), never
    the workers' cache.
  - Runs on the controller and changes nothing.
version_added: "0.2.0"
author: reefguide-efs developers
options:
  operation:
    description: Which playbook's input to check.
    type: str
    choices: [teardown, rollback]
    required: true
  dest:
    description: V(rollback) destination relative to the EFS root (or use O(preset)).
    type: str
  preset:
    description: V(rollback) named destination, V(reefguide_data) or V(adria_datapackage).
    type: str
  package:
    description: Data package name with O(preset=adria_datapackage).
    type: str
  release_id:
    description: V(rollback) the release to put back (default the previous one).
    type: str
  keep:
    description: V(teardown) previous releases kept per destination (a whole number, 0 or more).
    type: raw
    default: 2
  remove:
    description: V(teardown) paths to delete, a list (a string is refused, not read letter by letter).
    type: raw
  allowed_roots:
    description: Where teardown may delete and rollback may act (relative to the EFS root).
    type: list
    elements: str
    default: [data/reefguide]
  transfer_prefix:
    description: Prefix of reefguide-efs objects in the transfer bucket.
    type: str
    default: reefguide-efs
"""

EXAMPLES = r"""
- name: Check the rollback request
  run_request:
    operation: rollback
    preset: adria_datapackage
    package: Moore_2025-01-17_v070_rc1
  delegate_to: localhost
  register: request
"""

RETURN = r"""
dest:
  description: V(rollback) the destination, normalised (no trailing slash).
  returned: operation=rollback
  type: str
live_manifest_key:
  description: V(rollback) the key of the record of what is live at O(dest).
  returned: operation=rollback
  type: str
legacy_live_manifest_key:
  description: V(rollback) the record's key in versions before 0.2 (dropped with it).
  returned: operation=rollback
  type: str
release_id:
  description: V(rollback) the release asked for, or null for the previous one.
  returned: operation=rollback
  type: str
keep:
  description: V(teardown) O(keep) as a number.
  returned: operation=teardown
  type: int
remove:
  description: V(teardown) the paths to delete, normalised.
  returned: operation=teardown
  type: list
records:
  description:
    - V(teardown) for each O(remove) path, the keys of the records of what is live there (dropped
      with the path, together with those of every destination below it).
  returned: operation=teardown
  type: list
staging_root:
  description: This tool's staging directory at the EFS root.
  returned: always
  type: str
cache:
  description: The workers' cache, relative to the EFS root.
  returned: always
  type: str
live_records_prefix:
  description: Where the records of what is live are filed in the transfer bucket.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.inputs import InputError, paths_to_remove, release_id, whole_number
from ansible.module_utils.reefguide.layout import (
    CACHE,
    STAGING_DIR,
    DestinationError,
    check_allowed,
    destination_facts,
    records_prefix,
    resolve_destination,
)
from ansible.module_utils.reefguide.paths import UnsafePathError


def rollback(p: dict) -> dict:
    dest, _mode = resolve_destination(p["dest"], p["preset"], p["package"])
    check_allowed(dest, p["allowed_roots"])
    facts = destination_facts(dest, p["transfer_prefix"])
    keys = ("dest", "dest_key", "live_manifest_key", "legacy_live_manifest_key")
    return dict({k: facts[k] for k in keys}, release_id=release_id(p["release_id"]))


def teardown(p: dict) -> dict:
    remove = paths_to_remove(p["remove"], p["allowed_roots"])
    records = []
    for path in remove:
        facts = destination_facts(path, p["transfer_prefix"])
        records.append({"dest": path, "live_manifest_key": facts["live_manifest_key"],
                        "legacy_live_manifest_key": facts["legacy_live_manifest_key"]})
    return {"keep": whole_number(p["keep"], "keep", 0), "remove": remove, "records": records}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            operation=dict(type="str", required=True, choices=["teardown", "rollback"]),
            dest=dict(type="str"),
            preset=dict(type="str"),
            package=dict(type="str"),
            release_id=dict(type="str"),
            keep=dict(type="raw", default=2),
            remove=dict(type="raw"),
            allowed_roots=dict(type="list", elements="str", default=["data/reefguide"]),
            transfer_prefix=dict(type="str", default="reefguide-efs"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = rollback(p) if p["operation"] == "rollback" else teardown(p)
    except (InputError, DestinationError, UnsafePathError) as exc:
        module.fail_json(msg="%s request refused, nothing started: %s" % (p["operation"], exc))
    module.exit_json(changed=False, staging_root=STAGING_DIR, cache=CACHE,
                     live_records_prefix=records_prefix(p["transfer_prefix"]), **result)


if __name__ == "__main__":
    main()
