"""No credential, session token or presigned URL in the output of the
playbooks, up to -vvvv (the aws_ssm plugin prints its presigned curl commands
at -vvv; efs_session redacts them). The same stage shows, at -vvvv, the time
limits each call over SSM gets."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from helpers import ROOT, run_playbook
from lab import Lab


def test_stage_and_teardown_at_vvvv_print_no_secret_and_give_each_call_the_short_ssm_timeout(
        lab: Lab, tmp_path: Path) -> None:
    """amazon.aws.aws_ssm gives every call the connection's ssm_timeout (then sends it again in a new
    session): each call of the remote part is short (reefguide_ssm_call_timeout); the long steps run
    detached under async_wrapper's time limit, the remote part's budget (reefguide_remote_timeout), and
    the release under its own (reefguide_release_timeout)."""
    creds = {  # the lab's moto takes any keys; these are distinctive enough to grep for
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "AWS_SESSION_TOKEN": "IQoJ" + secrets.token_urlsafe(60),
    }
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    output = ""
    limits = ["-e", "reefguide_remote_timeout=7200", "-e", "reefguide_ssm_call_timeout=123",
              "-e", "reefguide_release_timeout=1800"]
    for play, args in (("stage_data.yml", ["-e", "src=%s" % src, "-e", "dest=data/reefguide/secret-check"] + limits),
                       ("teardown.yml", [])):
        run = run_playbook(lab.env, ROOT / "inventory" / "lab.yml", "-vvvv", play, *args, env=creds)
        assert run.returncode == 0, run.stdout[-3000:]
        output += run.stdout + run.stderr
        if play == "stage_data.yml":
            remaining = [int(n) for n in re.findall(r"EXEC remaining: (\d+) second", run.stdout)]
            assert remaining and max(remaining) <= 123, remaining[:5]
            # the instance's detached steps (the controller's own background tasks run from /root)
            # (its pull and tidy steps get what is left of the remote part's budget, the release its own)
            limits_seen = [int(n) for n in re.findall(r"/home/ssm-user/\S+/async_wrapper\.py j\d+ (\d+) ", run.stdout)]
            release = [n for n in limits_seen if n <= 1800]
            assert release and min(release) > 1700, limits_seen
            rest = [n for n in limits_seen if n > 1800]
            assert rest and 7000 < min(rest) and max(rest) <= 7200, limits_seen
    assert "EXEC: curl" in output  # the plugin's transfers were printed, so the check below means something
    for name, value in creds.items():
        assert value not in output, name
    for marker in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token"):
        assert marker not in output, marker
