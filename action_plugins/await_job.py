# Waits for a background (async) task to finish, polling its status on the controller side.
# Replaces `async_status` with `until`/`retries`, whose every poll prints "FAILED - RETRYING",
# which reads as trouble on a run that is only waiting.

from __future__ import annotations

import sys
import time
from typing import Any, Optional

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import action_loader
from ansible.utils.vars import merge_hash


class ActionModule(ActionBase):
    _requires_connection = True

    def run(self, tmp: Any = None, task_vars: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec={
            "jid": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 900},
            "delay": {"type": "float", "default": 1},
        })
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        deadline = time.monotonic() + args["timeout"]
        polls = 0
        # a job on the controller is polled in this worker (reefguide_in_process), not a new Python per poll
        in_process = sys.modules[action_loader.get("reefguide_in_process", class_only=True).__module__]
        here = in_process.runs_here(self, task_vars or {})
        while True:
            polls += 1
            status_args = {"jid": args["jid"], "mode": "status", "_async_dir": async_dir}
            if here:
                status = in_process.run_here(self, "ansible.legacy.async_status", status_args, task_vars or {})
            else:
                status = self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                              module_args=status_args)
            # a failed poll is final: async_status's own failures (no such job, a torn result) say
            # finished, and a crash of async_status says nothing of the job: polling on would only wait
            if status.get("finished") or status.get("failed"):
                break
            if time.monotonic() >= deadline:
                raise AnsibleActionFail("background job %s still running after %d s" % (args["jid"], args["timeout"]))
            time.sleep(args["delay"])
        result = merge_hash(result, status)
        result["finished"] = bool(result.get("finished"))
        result["polls"] = polls
        return result
