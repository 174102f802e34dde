"""stage_data.yml with hostile file names and wrong settings, against the lab.

Names are staged byte for byte and never executed; a wrong stack, region,
credentials or a terminated instance gets a message that says what to do,
before any instance is started or any data is moved."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import ROOT, run_playbook, tree
from lab import Lab

INVENTORY = ROOT / "inventory" / "lab.yml"
# Were a name ever run by a shell, this file would appear in that user's home.
CANARY = "reefguide-efs-canary-%d" % os.getpid()

# name -> content. Every name here must reach EFS unchanged. A newline in a
# name is not here: moto's router answers 404 for such keys (real S3 and
# rclone serve s3 take them; test_s3_sync round-trips one on rclone).
NASTY = {
    "with space.txt": b"space",
    "single'quote.txt": b"quote",
    'double"quote.txt': b"dquote",
    "$(cd;touch %s).txt" % CANARY: b"subshell",
    "`cd;touch %s`.txt" % CANARY: b"backtick",
    "semi;colon&amp|pipe.txt": b"meta",
    "-leading-dash.txt": b"dash",
    "--help": b"double dash",
    "r\u00e9cif_\u65e5\u672c.txt": b"non-ASCII",
    "x" * 255: b"255 bytes",
    "empty.bin": b"",
    "*glob?[x].txt": b"glob",
    "back\\slash.txt": b"backslash",
    "%41%2F.txt": b"percent",
    "tab\there.txt": b"tab",
}


def test_hostile_names_are_staged_byte_for_byte_and_never_run(lab: Lab, tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src.joinpath(*["level%02d" % i for i in range(40)])
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"deep")
    for name, data in NASTY.items():
        (src / name).write_bytes(data)
    (src / "dir with 'quote'").mkdir()
    (src / "dir with 'quote'" / "inner $HOME.txt").write_bytes(b"inner")
    (src / "empty-dir").mkdir()
    (src / "link-inside.txt").symlink_to("with space.txt")  # followed: stays within src
    dest = "data/reefguide/nasty names"
    run = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest='%s'" % dest)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]

    staged = lab.efs_path / dest
    want = tree(src)
    assert tree(staged) == want
    assert len(want) == len(NASTY) + 3
    assert not (staged / "link-inside.txt").is_symlink()  # staged as the file it points to
    # nothing was executed from a name, on the controller or on the instance (its homes live in the lab dir)
    # (os.walk, not rglob: other pytest-xdist workers' Ansible runs remove their ~/.ansible/tmp
    # directories while the walk goes on, and os.walk skips what vanished)
    for top in (Path.home(), ROOT, tmp_path, lab.dir):
        assert not [d for d, dirs, files in os.walk(top) if CANARY in dirs + files], top
    # S3 has no directories: the manifest carries empty ones
    assert (staged / "empty-dir").is_dir() and not os.listdir(staged / "empty-dir")
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"

    again = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest='%s'" % dest)
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout[-3000:]


def test_symlink_escaping_src_is_refused_and_nothing_starts(lab: Lab, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not for EFS")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    (src / "escape.txt").symlink_to(outside)
    before = lab.sessions_started()
    run = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=data/reefguide/esc")
    assert run.returncode != 0
    assert "escape.txt" in run.stdout and "outside" in run.stdout, run.stdout[-3000:]
    assert lab.sessions_started() == before
    assert not (lab.efs_path / "data/reefguide/esc").exists()
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"


@pytest.mark.parametrize(
    ("extra", "env", "words"),
    [
        (["-e", "reefguide_stack_name=no-such-stack"], {}, ["no-such-stack", "does not exist"]),
        (["-e", "reefguide_region=eu-west-1"], {}, ["eu-west-1", "region"]),
        ([], {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"},
         ["credentials"]),
    ],
    ids=["wrong-stack", "wrong-region", "no-credentials"],
)
def test_wrong_deployment_settings_are_refused_before_anything_starts(
    lab: Lab, tmp_path: Path, extra: list[str], env: dict[str, str], words: list[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    before = lab.sessions_started()
    run = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=data/reefguide/w",
                       *extra, env=env)
    assert run.returncode != 0
    for word in words:
        assert word in run.stdout, (word, run.stdout[-3000:])
    assert lab.sessions_started() == before
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"


def test_a_teardown_asked_to_remove_the_workers_root_is_refused_before_anything_starts(lab: Lab) -> None:
    """Issue 23: `remove` of data/reefguide (here spelled data/reefguide/., with the allowed roots widened
    to data) once deleted the workers' data, cache and every data package."""
    root = lab.efs_path / "data" / "reefguide"
    (root / "cache").mkdir(parents=True, exist_ok=True)
    before, sessions = tree(root), lab.sessions_started()
    run = run_playbook(lab.env, INVENTORY, "teardown.yml",
                       "-e", json.dumps({"remove": ["data/reefguide/."], "reefguide_allowed_roots": ["data"]}))
    assert run.returncode != 0
    assert "data/reefguide is the workers' root" in run.stdout and "data/reefguide/<name>" in run.stdout, \
        run.stdout[-3000:]
    assert tree(root) == before and (root / "cache").is_dir()
    assert lab.sessions_started() == sessions
    assert lab.supervisor()["instances"][lab.instance_id]["ec2_state"] == "stopped"


def test_terminated_instance_is_a_clear_error(lab: Lab, tmp_path: Path) -> None:
    other = json.loads(lab.ctl("deploy", "--stack-name", "reefguide-terminated").stdout)
    lab.client("ec2").terminate_instances(InstanceIds=[other["instance_id"]])
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    run = run_playbook(lab.env, INVENTORY, "stage_data.yml", "-e", "src=%s" % src, "-e", "dest=data/reefguide/t",
                       "-e", "reefguide_stack_name=reefguide-terminated")
    assert run.returncode != 0
    assert other["instance_id"] in run.stdout and "terminated" in run.stdout, run.stdout[-3000:]
    efs = lab.dir / "efs" / other["fs_id"] / "data/reefguide/t"
    assert not efs.exists()
