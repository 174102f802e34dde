"""No credential, session token or presigned URL in the output of the
playbooks, up to -vvv (the aws_ssm plugin prints its presigned curl commands
at -vvv; efs_session redacts them)."""

from __future__ import annotations

import secrets
from pathlib import Path

from helpers import ROOT, run_playbook
from lab import Lab


def test_stage_and_teardown_at_vvv_print_no_secret(lab: Lab, tmp_path: Path) -> None:
    creds = {  # the lab's moto takes any keys; these are distinctive enough to grep for
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "AWS_SESSION_TOKEN": "IQoJ" + secrets.token_urlsafe(60),
    }
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    output = ""
    for play, args in (("stage_data.yml", ["-e", "src=%s" % src, "-e", "dest=data/reefguide/secret-check"]),
                       ("teardown.yml", [])):
        run = run_playbook(lab.env, ROOT / "inventory" / "lab.yml", "-vvv", play, *args, env=creds)
        assert run.returncode == 0, run.stdout[-3000:]
        output += run.stdout + run.stderr
    assert "EXEC: curl" in output  # the plugin's transfers were printed, so the check below means something
    for name, value in creds.items():
        assert value not in output, name
    for marker in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token"):
        assert marker not in output, marker
