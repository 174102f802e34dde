"""What the live records say and what EFS holds, for the tests of the record of what is live
(test_live_record.py, test_live_record_property.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ansible.module_utils.reefguide.layout import key_to_target, target_key

from helpers import ROOT, run_playbook
from lab import Lab

INVENTORY = ROOT / "inventory" / "lab.yml"
NOTHING = "Nothing to do"


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def play(lab: Lab, *args: str) -> str:
    run = run_playbook(lab.env, INVENTORY, *args)
    assert run.returncode == 0, run.stdout[-4000:]
    return run.stdout


def stage(lab: Lab, src: Path, dest: str, *extra: str) -> str:
    return play(lab, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=%s" % dest, *extra)


def digests(root: Path) -> dict[str, tuple[int, str]]:
    """Each file under root, by its relative path: (size, SHA-256), as the records name them."""
    return {str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}


def released_targets(lab: Lab) -> list[str]:
    """The targets with releases of their own (their keys in the releases area, decoded)."""
    releases = lab.efs_path / ".reefguide-releases"
    return [key_to_target(k.name) for k in releases.iterdir()
            if k.is_dir() and not k.name.startswith(".")] if releases.is_dir() else []


def efs_files(lab: Lab, dest: str) -> dict[str, tuple[int, str]]:
    """What EFS holds at dest, apart from the targets below it with releases of their own: every
    stage of ours (replace and mirror) leaves them as they are."""
    inner = tuple(t[len(dest) + 1:] + "/" for t in released_targets(lab) if t.startswith(dest + "/"))
    return {rel: v for rel, v in digests(lab.efs_path / dest).items() if not rel.startswith(inner)}


def live_records(lab: Lab) -> dict[str, dict]:
    s3 = lab.client("s3")
    out = {}
    for obj in s3.list_objects_v2(Bucket=lab.bucket, Prefix="reefguide-efs/live/").get("Contents", []):
        doc = json.loads(s3.get_object(Bucket=lab.bucket, Key=obj["Key"])["Body"].read())
        if doc.get("dest"):
            out[doc["dest"]] = doc
    return out


def assert_records_true(lab: Lab, step: str) -> None:
    """Each record names what EFS holds at its destination (efs_files)."""
    for dest, doc in live_records(lab).items():
        if doc.get("pending"):
            continue  # marked: it claims nothing until its operation writes what it did
        recorded = {rel: (e["size"], e["sha256"]) for rel, e in doc["files"].items()}
        on_efs = efs_files(lab, dest)
        if doc.get("complete", True):
            assert on_efs == recorded, (step, dest, "record says", recorded, "EFS holds", on_efs)
        else:  # a merge onto a destination nobody had recorded: what it names is there
            assert {rel: on_efs.get(rel) for rel in recorded} == recorded, (step, dest)



def released_data(lab: Lab) -> dict[str, tuple[int, str]]:
    """Every file live at a target with releases of its own, by its path under the EFS root."""
    out: dict[str, tuple[int, str]] = {}
    for target in released_targets(lab):
        out.update({"%s/%s" % (target, rel): v for rel, v in digests(lab.efs_path / target).items()})
    return out


def kept_anywhere(lab: Lab) -> set[tuple[str, tuple[int, str]]]:
    """(path under the EFS root, digest) of every file live at a released target or kept in one of its
    releases (where rollback.yml would put it back)."""
    out = set(released_data(lab).items())
    for target in released_targets(lab):
        area = lab.efs_path / ".reefguide-releases" / target_key(target)
        for kept in (d for d in area.iterdir() if d.is_dir() and not d.name.startswith(".")):
            out.update(("%s/%s" % (target, rel), v) for rel, v in digests(kept).items())
    return out


def assert_no_released_data_lost(lab: Lab, before: dict[str, tuple[int, str]], step: str,
                                 mirrored: str = "") -> None:
    """Every file that was live at a released target before the step is still live or kept in a
    release that rollback.yml brings back; what a mirror changes in place (its destination, as
    documented: no rollback) is the one exception."""
    kept = kept_anywhere(lab)
    lost = sorted(path for path, v in before.items()
                  if (path, v) not in kept and not (mirrored and (path + "/").startswith(mirrored + "/")))
    assert not lost, (step, "was live and is now lost:", lost)
