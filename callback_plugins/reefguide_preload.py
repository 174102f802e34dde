"""Loads the amazon.aws SSM connection plugin (and so boto3) once, in the
controller's main process, before any task runs, and parses the AWS service
models the controller-side modules use into their shared botocore loader.

Ansible forks a worker per task and each worker loads the host's connection
plugin; imported in the parent, it is inherited by every fork instead of being
imported again by each (about 0.12 s of CPU per task of a run over SSM). The
modules that run inside the worker (action_plugins/reefguide_in_process.py)
build their clients from that loader: 0.015 s a client instead of 0.05-0.25 s
(module_utils/reefguide/aws.py)."""

from __future__ import annotations

DOCUMENTATION = """
name: reefguide_preload
type: aggregate
short_description: import the SSM connection plugin once, before the forks
description:
  - Imports amazon.aws.aws_ssm (and boto3) in the controller's main process, so the
    per-task worker processes inherit it instead of importing it each.
  - Parses the models of the AWS services the controller-side modules call into the
    botocore loader they share, so each worker inherits them parsed.
  - Prints nothing and changes no result.
"""

import sys

from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import action_loader, connection_loader


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "reefguide_preload"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            connection_loader.get("amazon.aws.aws_ssm", class_only=True)
        except Exception:  # noqa: BLE001 - a missing collection is reported by the task that needs it
            pass
        self.warmed = False

    def v2_playbook_on_play_start(self, play):
        # a play on the controller alone (molecule's create and verify, a test's set-up) calls no
        # AWS module in the worker: the parse (0.5 s) is for plays on a deployment
        if self.warmed or all(h in ("localhost", "127.0.0.1") for h in (play.hosts or [])):
            return
        self.warmed = True
        try:
            in_process = sys.modules[action_loader.get("reefguide_in_process", class_only=True).__module__]
            in_process.warm_aws_models()
        except Exception:  # noqa: BLE001 - no boto3 here, or another module_utils: each module builds its own
            pass
