# Runs a module of library/ inside the task's worker process when the task runs on the controller
# itself (delegate_to: localhost) with the controller's own Python, instead of in a new Python.
#
# A module run the usual way costs a new interpreter, an AnsiballZ payload compiled from its zip,
# and boto3 imported again: about 0.5 s of CPU per task, some 15 tasks of a stage. The worker is
# a fork of ansible-playbook, which has boto3 loaded already (callback_plugins/reefguide_preload.py),
# and it ends with the task, so nothing the module does outlives it. The module gets the same
# arguments and its result is parsed the same way. Any other case (another host or Python,
# become, async with polling, a task environment) runs the usual way.
#
# An async task with poll 0 (the lock's heartbeat, which lasts the whole run) runs in a daemon
# forked from the worker (a session of its own, stdio on /dev/null, killed at the task's async
# seconds as async_wrapper would), not in a new Python under async_wrapper: that cost about 1.5 s
# of CPU a run and left a result file in the controller's ~/.ansible_async that nothing read.
#
# library/<name>.py opts in with an action plugin of its name that is this class:
#     ActionModule = action_loader.get("reefguide_in_process", class_only=True)

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import sys
import traceback
from typing import Any, Optional

from ansible import constants as C
from ansible.module_utils.common.json import Direction, get_module_encoder
from ansible.plugins.action import ActionBase
from ansible.plugins.action.normal import ActionModule as NormalAction
from ansible.utils.vars import merge_hash
from ansible.vars.clean import remove_internal_keys

PROFILE = "legacy"  # the serialization profile of every module in library/ (none declares another)
# The AWS services the in-process modules call (deployment_info, deployment_lock, ecs_workers,
# live_manifest, mgmt_instance, s3_prefix): warm_aws_models parses their models before the workers fork.
AWS_SERVICES = ("cloudformation", "ec2", "ecs", "s3", "ssm")


def project_module_utils() -> None:
    """The project's module_utils under ansible.module_utils, as AnsiballZ packs them."""
    import ansible.module_utils

    for extra in C.DEFAULT_MODULE_UTILS_PATH or []:
        if extra not in ansible.module_utils.__path__:
            ansible.module_utils.__path__.append(extra)


def warm_aws_models() -> None:
    """In ansible-playbook itself (callback_plugins/reefguide_preload.py): the models of
    AWS_SERVICES parsed into the loader the modules share (module_utils/reefguide/aws.py), which
    every task's worker, a fork, then inherits."""
    project_module_utils()
    from ansible.module_utils.reefguide import aws

    aws.warm_loader(AWS_SERVICES)


def _host_vars(action: ActionBase, task_vars: dict[str, Any]) -> dict[str, Any]:
    """The variables of the host the module runs on (the delegated one, as _configure_module takes them)."""
    if action._task.delegate_to:
        return (task_vars.get("ansible_delegated_vars") or {}).get(action._task.delegate_to) or {}
    return task_vars


def runs_here(action: ActionBase, task_vars: dict[str, Any]) -> bool:
    """True when the module would run on this machine, as this user, in this very Python (an
    async task only when it is not polled: poll 0)."""
    if getattr(action._connection, "transport", "") not in ("local", "ansible.builtin.local"):
        return False
    if action._task.async_val and action._task.poll != 0:
        return False
    if action._play_context.become or action._compute_environment_string():
        return False
    interpreter = _host_vars(action, task_vars).get("ansible_python_interpreter")
    if not interpreter:
        return False
    try:
        interpreter = action._templar.template(interpreter)
    except Exception:  # noqa: BLE001 - an interpreter we cannot resolve here: the usual way decides
        return False
    return isinstance(interpreter, str) and os.path.realpath(interpreter) == os.path.realpath(sys.executable)


def module_payload(action: ActionBase, module_name: str, module_args: dict[str, Any],
                   task_vars: dict[str, Any]) -> tuple[str, str]:
    """(the module's path, its arguments as AnsiballZ hands them to it)."""
    path = action._shared_loader_obj.module_loader.find_plugin(module_name, mod_type=".py")
    args = dict(module_args)
    action._update_module_args(module_name, args, task_vars)
    encoder = get_module_encoder(PROFILE, Direction.CONTROLLER_TO_MODULE)
    return path, json.dumps({"ANSIBLE_MODULE_ARGS": args}, cls=encoder)


def exec_module(path: str, payload: str, basedir: str) -> tuple[int, str]:
    """(exit code, stdout) of the module at path run in this process with payload as its arguments."""
    from ansible.module_utils import basic

    project_module_utils()
    basic._ANSIBLE_ARGS, basic._ANSIBLE_PROFILE = payload.encode(), PROFILE

    out, saved, cwd = io.StringIO(), sys.stdout, os.getcwd()
    rc = 0
    sys.stdout = out
    os.chdir(basedir)  # where the local connection runs a module
    try:
        with open(path, "rb") as fh:  # not runpy.run_path: the controller's path hooks claim ansible/modules/*.py
            code = compile(fh.read(), path, "exec")
        exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
    except SystemExit as exc:  # exit_json / fail_json
        rc = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - reported as a module failure, as a crash in its own process would be
        rc = 1
        out.write(json.dumps({"failed": True, "msg": "MODULE FAILURE: %s crashed" % os.path.basename(path)[:-3],
                              "module_stderr": traceback.format_exc()}))
    finally:
        sys.stdout = saved
        os.chdir(cwd)
        basic._ANSIBLE_ARGS = basic._ANSIBLE_PROFILE = None
    return rc, out.getvalue()


def run_here(action: ActionBase, module_name: str, module_args: dict[str, Any],
             task_vars: dict[str, Any]) -> dict[str, Any]:
    """The module's result, run in this process as AnsiballZ would run it in a new one."""
    path, payload = module_payload(action, module_name, module_args, task_vars)
    rc, stdout = exec_module(path, payload, action._loader.get_basedir())
    data = action._parse_returned_data({"rc": rc, "stdout": stdout, "stderr": ""}, PROFILE)
    data.pop("_ansible_suppress_tmpdir_delete", None)
    remove_internal_keys(data)  # as _execute_module does
    return data


def start_here(action: ActionBase, module_name: str, module_args: dict[str, Any],
               task_vars: dict[str, Any]) -> dict[str, Any]:
    """An async task's start (poll 0): the module runs in a daemon forked from this worker, killed
    after the task's async seconds; nothing waits for it or reads its result."""
    path, payload = module_payload(action, module_name, module_args, task_vars)
    basedir, seconds = action._loader.get_basedir(), int(action._task.async_val)
    jid = "j%d" % secrets.randbelow(10 ** 12)
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # out of the worker's session: the worker kills its own process group when it ends
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
                    signal.signal(signum, signal.SIG_DFL)  # the worker's handlers would kill its group
                os.write(write_end, b"%d" % os.getpid())
                os.close(write_end)
                signal.alarm(seconds)  # what async_wrapper does to a job past its time
                exec_module(path, payload, basedir)  # its result goes nowhere, as with poll 0
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(first, 0)
    with os.fdopen(read_end, "rb") as fh:
        daemon = fh.read(32).decode()
    if not daemon:  # the daemon never got as far as its pid: nothing runs
        return {"failed": True, "msg": "%s could not be started in the background (a fork of the task's worker "
                                       "failed): run again" % module_name}
    return {"started": 1, "finished": 0, "changed": False, "ansible_job_id": "%s.%s" % (jid, daemon),
            "msg": "%s runs in the background (pid %s, at most %d s)" % (module_name, daemon, seconds)}


class ActionModule(NormalAction):
    """Ansible's own action for a module (ansible.builtin.normal), run here when it can be."""

    def run(self, tmp: Any = None, task_vars: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        if not runs_here(self, task_vars or {}):
            return super().run(tmp, task_vars)
        result = ActionBase.run(self, tmp, task_vars)
        here = start_here if self._task.async_val else run_here
        return merge_hash(result, here(self, self._task.action, self._task.args, task_vars or {}))
