# reefguide-efs: the remote part of a stage, teardown or rollback, in one SSM session.
#
# Each task on the management instance opens an SSM session (seconds each on
# real AWS), so the remote steps of an operation run as one task: this action
# plugin calls the capability modules in turn over the same connection,
# between mounting EFS and putting the mount back as it was. The steps that can
# take long run detached on the instance and are followed with short calls
# (reefguide_remote/detached.py), so Session Manager's idle timeout never ends
# the session under them. Documentation: library/efs_session.py.

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()


def _load_remote(part: str) -> Any:
    """reefguide_remote/<part>.py, the package loaded by path: Ansible's plugin loader does not put
    action_plugins/ on sys.path."""
    name = "reefguide_efs_remote"
    if name not in sys.modules:
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reefguide_remote")
        spec = importlib.util.spec_from_file_location(name, os.path.join(here, "__init__.py"),
                                                      submodule_search_locations=[here])
        package = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = package
        spec.loader.exec_module(package)  # type: ignore[union-attr]
    return importlib.import_module("%s.%s" % (name, part))


detached = _load_remote("detached")
transport = _load_remote("transport")

# The task's arguments, checked and defaulted in one place (documented in library/efs_session.py).
ARGUMENT_SPEC: dict[str, Any] = dict(
    operation=dict(type="str", choices=["stage", "teardown", "rollback", "compare"], default="stage"),
    install_packages=dict(type="bool", default=True),
    remove=dict(type="list", elements="str", default=[]),
    allowed_roots=dict(type="list", elements="str", default=["data/reefguide"]),
    fs_id=dict(type="str", required=True),
    efs_root=dict(type="str", required=True),
    user=dict(type="str", default="ec2-user"),
    mount_options=dict(type="str", default="tls,iam"),
    bucket=dict(type="str"),
    prefix=dict(type="str"),
    dest=dict(type="str"),
    staging=dict(type="str"),
    # the EFS layout, from stage_request/run_request (module_utils/reefguide/layout.py): an action
    # plugin runs on the controller and cannot import module_utils
    staging_area=dict(type="str"),
    staging_root=dict(type="str"),
    cache_in_dest=dict(type="str"),
    cache=dict(type="str"),
    checksum_cache=dict(type="str"),
    run_id=dict(type="str"),
    mode=dict(type="str", choices=["replace", "merge", "mirror"], default="replace"),
    clear_cache=dict(type="bool", default=False),
    keep=dict(type="int", default=2),
    # the oldest running worker task's start (ecs_workers restart=none; 0: unknown): efs_release keeps what it may hold
    workers_since=dict(type="float"),
    release_id=dict(type="str"),
    concurrency=dict(type="int", default=16),
    endpoint_url=dict(type="str"),
    region=dict(type="str"),
    # destinations whose records name a fingerprint: taken again at the end, to notice hand edits
    fingerprint=dict(type="list", elements="str", default=[]),
    # the whole remote part's budget; each call over SSM has the connection's short ssm_timeout
    remote_timeout=dict(type="int", default=14400),
    # the release's (or rollback's, or removal's) own limit: never cut short by what the pull left of remote_timeout
    release_timeout=dict(type="int", default=3600),
    poll_interval=dict(type="float", default=10.0),
    progress_file=dict(type="str"),
    # operation=compare (a check run): the local manifest, rel -> [size, SHA-256]
    files=dict(type="dict"),
)
# Modules that write on EFS, and the argument that makes them refuse when it is no longer mounted.
# (s3_sync takes the mount point itself: it also runs on the controller, with no mount to check).
MUST_FIND_EFS_MOUNTED = ("efs_staging", "efs_tidy", "efs_release", "s3_sync")
REQUIRED_IF = [
    ("operation", "stage", ("bucket", "prefix", "dest", "staging", "staging_area", "run_id")),
    ("operation", "teardown", ("staging_root",)),
    ("operation", "rollback", ("dest",)),
    ("operation", "compare", ("dest", "files")),
]


# amazon.aws.aws_ssm moves module files through presigned S3 URLs and, at -vvv,
# prints the curl command that fetches them: query strings carrying the access
# key id, the signature and the session token.
PRESIGNED_QUERY = re.compile(r"\?(?=[^\s'\"]*X-Amz-)[^\s'\"]*")


def redacted(text: str) -> str:
    return PRESIGNED_QUERY.sub("?<presigned query redacted>", text)


def redact_connection_display(connection: Any) -> None:
    """Route the SSM connection's verbose output through redacted(), once."""
    show: Optional[Callable[[int, str], None]] = getattr(connection, "verbosity_display", None)
    if show is None or getattr(show, "reefguide_redacts", False):
        return

    def display(level: int, message: str) -> None:
        show(level, redacted(str(message)))

    display.reefguide_redacts = True  # type: ignore[attr-defined]
    connection.verbosity_display = display


# amazon.aws.aws_ssm fetches the module on the instance with `curl -o F URL; touch F`:
# an S3 error leaves F empty or holding an XML error body, and python then runs
# nothing or stops at line 1. The module never started, so sending it again is safe.
TRANSFER_ATTEMPTS = 3


def module_never_arrived(res: dict[str, Any]) -> bool:
    if res.get("failed") and "cmd" in res and "Exec format error" in str(res.get("msg")):
        return True  # a detached step: async_wrapper found no #! line in the file, so not what was sent
    if not res.get("failed") or "module_stdout" not in res:
        return False
    out = re.sub(r"BECOME-SUCCESS-\w+", "", str(res.get("module_stdout") or "")).strip()  # sudo's marker
    text = out + str(res.get("module_stderr") or "")  # over SSM's pty, stderr arrives in stdout
    # (a detached step's result has no rc: async_wrapper ran the empty file and found no output)
    empty_file = not out and not res.get("module_stderr") and res.get("rc", 0) == 0
    # Ansible generates the AnsiballZ wrapper: a SyntaxError in it means it is not what was sent
    error_body = "SyntaxError" in text and re.search(r"AnsiballZ_\w+\.py\", line \d+", text) is not None
    return empty_file or error_body


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    start_token: Optional[str] = None  # set by detached.Detached while it starts a step

    def _low_level_execute_command(self, cmd: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """A detached step's start runs only if it claims its token (reefguide_remote/detached.py):
        the same start sent twice starts one job."""
        token = self.start_token
        if token and "ANSIBLE_ASYNC_DIR=%s " % detached.claim_dir(token) in cmd and "async_wrapper" in cmd:
            cmd = detached.guarded_start(cmd, token)
        return super()._low_level_execute_command(cmd, *args, **kwargs)

    @contextmanager
    def for_real(self) -> Iterator[None]:
        """Run the enclosed module calls outside check mode. Only for the mount and its
        unmount: a check run on a running instance must see EFS to say what it would do."""
        saved = self._task.check_mode
        self._task.check_mode = False
        try:
            yield
        finally:
            self._task.check_mode = saved

    def step(self, name: str, module: str, args: dict[str, Any], detach: bool = True,
             progress: Optional[str] = None, changes_live: bool = False) -> dict[str, Any]:
        """Run one module on the instance: detached and followed with short polls (every step that
        can be long on a large tree), or as one call (the mount). changes_live: the step changes
        what is live (a release, rollback, removal, or a mirror pull into the destination); then
        self.live_changed says afterwards whether it did: True, False, or None when unknown (the
        step was lost, or failed without saying that it touched nothing)."""
        if changes_live:
            self.live_changed = None
        if module in MUST_FIND_EFS_MOUNTED:
            # every step that writes checks first that EFS is still mounted where this session put it
            args = dict(args, require_mount=self.mount_root if module == "s3_sync" else True)
        for attempt in range(1, TRANSFER_ATTEMPTS + 1):
            if detach:
                # a step that changes what is live has a budget of its own: async_wrapper would kill
                # it at its limit, halfway through a swap (a mirror pull is the pull: remote_timeout)
                limit = self.release_timeout if changes_live and module != "s3_sync" else None
                res = self.detached.run(name, module, args, progress, limit)
            else:  # a short idempotent call (the mount): asked again when its session ends under it
                res = transport.ask_again("%s (%s)" % (name, module), lambda: self._execute_module(
                    module_name=module, module_args=args, task_vars=self.task_vars))
            if attempt == TRANSFER_ATTEMPTS or not module_never_arrived(res):
                break
            display.warning("%s: the module file did not reach the instance intact (an S3 error during "
                            "the SSM plugin's transfer); sending it again (%d of %d)"
                            % (name, attempt + 1, TRANSFER_ATTEMPTS))
        self.steps[name] = {k: v for k, v in res.items() if k not in ("invocation", "_ansible_no_log")}
        if changes_live:
            failed = res.get("failed") or res.get("unreachable")
            # a module that does not say (efs_tidy, s3_sync): unknown after a failure, its changed after success
            self.live_changed = res.get("live_changed", None if failed else bool(res.get("changed")))
        if res.get("failed") or res.get("unreachable"):
            raise AnsibleActionFail("%s (%s) failed: %s" % (name, module, self.reason(res)), result=res)
        return res

    @staticmethod
    def reason(res: dict[str, Any]) -> str:
        """The module's message, or its exception's, never a repr of the whole result."""
        if res.get("msg"):
            return str(res["msg"])
        exc = res.get("exception")
        event = getattr(exc, "event", None)
        if event is not None and getattr(event, "msg", None):
            return "module error: %s" % event.msg
        if isinstance(exc, dict):
            return "module error: %s" % exc.get("event", {}).get("msg", exc)
        return "module error: %s" % (exc or "no message")

    def cleanup(self, force: bool = False) -> None:
        """The temporary directory on the instance goes as usual; but a session lost with the instance
        (stopped) must not turn the result run() returned, which says what became of the live data,
        into a bare connection error."""
        try:
            super().cleanup(force)
        except Exception as exc:
            display.warning("efs_session: the temporary directory on the instance was not removed: %s" % exc)

    def run(self, tmp: Any = None, task_vars: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        self.task_vars = task_vars or {}
        started = time.time()  # the stage summary's timeline: started_at always, ended_at on success
        redact_connection_display(self._connection)
        transport.guard_connection(self._connection)  # a session ended mid-command raises, never answers rc 0
        result = super().run(tmp, self.task_vars)
        # one place for the defaults (documented in library/efs_session.py); roles pass their own values
        _, a = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF)
        op = a["operation"]
        self.steps: dict[str, Any] = {}
        self.live_changed: Optional[bool] = False
        root = self.mount_root = a["efs_root"]
        user = a["user"]
        mounted_here = False
        self.release_timeout = a["release_timeout"]
        self.detached = detached.Detached(self, time.time() + a["remote_timeout"], a["poll_interval"],
                                          a["progress_file"], a["run_id"] or "")
        try:
            # a step a lost controller or session left running (an install too) ends before this run's own
            result["waited_for"] = self.detached.wait_for_earlier()
            was_mounted = self.ensure_packages(a["install_packages"], root)
            # in check mode too: EFS is mounted (and unmounted again below) so the checked
            # steps can read it; they change nothing
            with self.for_real():
                mount = self.step("mount", "efs_mount", {
                    "state": "mounted", "fs_id": a["fs_id"], "path": root, "user": user,
                    "options": a["mount_options"], "owner": user, "group": user,
                }, detach=False)
            # a mount asked again after its session ended under it finds EFS mounted: by this run,
            # if it was not mounted before
            mounted_here = bool(mount.get("mounted_by_this_call")) or not was_mounted
            outcome = getattr(self, op)(a, root, user)
            # what EFS now holds, for the summary's cost estimate (never fails the operation)
            # and the fingerprints of the recorded destinations, this stage's own among them
            wanted = a["fingerprint"] + ([a["dest"]] if op == "stage" else [])
            usage = self.detached.run("usage", "efs_usage", {"root": root, "fingerprint": wanted})
            if not usage.get("failed"):
                outcome["usage"] = {k: usage.get(k) for k in ("bytes", "files", "areas", "complete")}
                outcome["fingerprints"] = usage.get("fingerprints") or {}
        # a step failed, or the session was lost (the SSM plugin raises botocore's errors as they come,
        # e.g. TargetNotConnected once the instance stopped): either way, say what became of the live data
        except Exception as exc:
            result.update(failed=True, msg=str(exc), steps=self.steps, remote_jobs=self.detached.jobs,
                          live_changed=self.live_changed)
            running = self.detached.running
            if running and self.live_changed is None:
                # the job that changes what is live may still run: stopping the instance would cut it halfway
                result["job_running"] = {"step": running["step"], "module": running["module"], "jid": running["jid"],
                                         "record": self.detached.record_path(running)}
                result["msg"] += (
                    ". Its job (%s, %s) may still be running on the instance: the instance is left running so that it "
                    "can finish (a stop would cut it halfway). The next run waits for it before it touches EFS; "
                    "ansible-playbook teardown.yml then stops the instance" % (running["step"], running["jid"]))
            if op == "stage" and a["mode"] != "mirror":
                result["staging_left"] = a["staging"]
            try:
                # EFS stays mounted under a job that may still run (the next run finds it mounted)
                self.unmount(root, mounted_here and "job_running" not in result, result)
            except Exception as lost:
                result.setdefault("warnings", []).append("EFS left mounted at %s: %s" % (root, lost))
            result["started_at"] = started
            return result
        self.unmount(root, mounted_here, result)
        result.update(outcome, steps=self.steps, mounted_here=mounted_here, remote_jobs=self.detached.jobs,
                      polls=self.detached.polls, live_changed=self.live_changed, started_at=started,
                      ended_at=time.time())
        return result

    def ensure_packages(self, install: bool, root: str) -> bool:
        """boto3 for the instance's python (the sync pulls with it), from the
        distribution's packages, once: a present one costs one tiny command in
        this same session. The probe finds the packages without importing them
        (0.01 s against 0.2 s of CPU); a broken install is still named, by the
        module that imports it (module_utils/reefguide/aws.py). The same probe
        says whether EFS's mount point is already mounted (returned)."""
        python = self.task_vars.get("ansible_python_interpreter") or "/usr/bin/python3"
        found = ("import importlib.util as u, os, sys; print('efs-mounted' if os.path.realpath(%r) in "
                 "[ln.split()[4] for ln in open('/proc/self/mountinfo')] else 'efs-not-mounted'); "
                 "sys.exit(not all(u.find_spec(m) for m in ('boto3', 'botocore')))" % root)
        probe = transport.ask_again("probing the instance's python", lambda: self._low_level_execute_command(
            "%s -c %s" % (python, shlex.quote(found)), sudoable=False))
        was_mounted = "efs-mounted" in (probe.get("stdout") or "").split()
        if probe.get("rc") == 0:
            self.steps["packages"] = {"changed": False, "msg": "boto3 present"}
            return was_mounted
        if self._task.check_mode:
            self.steps["packages"] = {"changed": True, "msg": "would install python3-boto3"}
            return was_mounted
        if not install:
            raise AnsibleActionFail("boto3 is not importable by %s on the instance: install python3-boto3 "
                                    "(dnf install -y python3-boto3) or set reefguide_install_packages: true" % python)
        cmd = ("if command -v dnf >/dev/null; then dnf install -y -q python3-boto3; "
               "else apt-get install -y -q python3-boto3; fi")
        # detached like every long step: a slow mirror must not outlast one SSM call (the call timeout)
        # or a session; asked again after a loss, the install is idempotent
        res = self.detached.run("packages", "ansible.legacy.command", {"_raw_params": cmd, "_uses_shell": True},
                                marks_began=False)
        ok = res.get("rc") == 0 and not res.get("failed")
        self.steps["packages"] = {"changed": ok, "rc": res.get("rc"),
                                  "msg": "installed python3-boto3" if ok else res.get("stderr") or res.get("msg", "")}
        if not ok:
            why = res.get("stderr") or res.get("stdout") or res.get("msg") or "rc=%s" % res.get("rc")
            raise AnsibleActionFail("installing python3-boto3 on the instance failed: %s" % why)
        return was_mounted

    # -- operations -------------------------------------------------------------
    def stage(self, a: dict[str, Any], root: str, user: str) -> dict[str, Any]:
        dest, mode = a["dest"], a["mode"]
        aws = {"endpoint_url": a["endpoint_url"] or None, "region": a["region"] or None}
        cache, staging_area = a["cache_in_dest"], a["staging_area"]
        if mode == "mirror":
            pull_into, pull_mode = root + "/" + dest, "mirror"
        else:
            if mode == "merge":
                # a failed run's staging may hold files of another src that a merge would never delete
                self.step("discard_leftover", "efs_tidy", {"root": root, "remove": [staging_area]})
            # replace: a failed run's staging is resumed; the mirror pull makes it equal the upload
            prepare = self.step("prepare", "efs_staging", {
                "root": root, "target": dest, "staging": a["staging"],
                "exclude": [cache] if cache else [],
            })
            pull_into, pull_mode = root + "/" + a["staging"], ("merge" if mode == "merge" else "mirror")
        # on the instance's /run, beside the job records; each poll copies it to the controller
        progress = "%s/%s-pull.progress.json" % (detached.JOBS_DIR, a["run_id"])
        pull_args = dict(aws, direction="pull", bucket=a["bucket"], prefix=a["prefix"], path=pull_into,
                         mode=pull_mode, concurrency=a["concurrency"], progress_file=progress)
        if mode == "mirror":
            # straight into dest: the cache and the targets released on their own below it stay
            pull_args["efs_root"] = root
            if cache:
                pull_args["exclude"] = [cache, cache + "/**"]
        if a["checksum_cache"]:
            pull_args["checksum_cache"] = root + "/" + a["checksum_cache"]
        pull = self.step("pull", "s3_sync", pull_args, progress=progress, changes_live=mode == "mirror")
        release: dict[str, Any] = {}
        if mode != "mirror":
            # staging_area: what is left of the run's staging area once its directory went live,
            # deleted in the release's own step (a step of its own cost a second of CPU a stage)
            release_args = {"root": root, "target": dest, "staging": a["staging"], "staging_area": staging_area,
                            "keep": a["keep"], "owner": user, "group": user}
            if a["workers_since"] is not None:
                release_args["workers_since"] = a["workers_since"]
            if a["release_id"]:
                release_args["release_id"] = a["release_id"]
            # s3_sync's changed: it wrote or deleted files or directories
            if not prepare.get("resumed", True) and not pull.get("changed", True):
                release_args["unchanged"] = True  # a fresh copy of the live tree, left as it was
            release = self.step("release", "efs_release", release_args, changes_live=True)
        if a["clear_cache"]:
            if not a["cache"]:
                raise AnsibleActionFail("clear_cache needs cache (stage_request's result)")
            # emptied, kept: the workers need it to exist
            self.step("clear_cache", "efs_tidy", {"root": root, "empty": [a["cache"]]})
        changed = any(self.steps.get(s, {}).get("changed") for s in ("pull", "release", "clear_cache"))
        return {"changed": changed, "pull": pull, "release_id": release.get("release_id"),
                "unchanged": bool(release.get("unchanged")), "pruned": release.get("pruned") or [],
                "held": release.get("held") or [],
                "previous_release_id": release.get("previous_release_id"), "swap_method": release.get("swap_method")}

    def teardown(self, a: dict[str, Any], root: str, user: str) -> dict[str, Any]:
        prune_args = {"root": root, "state": "pruned", "keep": a["keep"], "staging": a["staging_root"]}
        if a["workers_since"] is not None:
            prune_args["workers_since"] = a["workers_since"]
        prune = self.step("prune", "efs_release", prune_args)
        tidy = self.step("remove", "efs_tidy", {
            "root": root, "remove": a["remove"], "allowed_roots": a["allowed_roots"],
        }, changes_live=bool(a["remove"]))
        freed = int(prune.get("bytes_freed") or 0) + int(tidy.get("bytes_freed") or 0)
        return {"changed": bool(prune.get("changed") or tidy.get("changed")), "bytes_freed": freed,
                "pruned": prune.get("pruned", []), "held": prune.get("held", []), "removed": tidy.get("removed", []),
                "kept_as_release": tidy.get("kept_as_release", [])}

    def compare(self, a: dict[str, Any], root: str, user: str) -> dict[str, Any]:
        """A check run's plan from what EFS holds (read-only)."""
        res = self.step("compare", "efs_compare", {"root": root, "dest": a["dest"], "files": a["files"],
                                                   "mode": a["mode"]})
        return {"changed": False, "compared": {k: res.get(k) for k in ("exists", "counts", "new", "changed_files",
                                                                       "removed")}}

    def rollback(self, a: dict[str, Any], root: str, user: str) -> dict[str, Any]:
        args = {"root": root, "target": a["dest"], "state": "rolled_back"}
        if a["release_id"]:
            args["release_id"] = a["release_id"]
        res = self.step("rollback", "efs_release", args, changes_live=True)
        return {"changed": bool(res.get("changed")), "release_id": res.get("release_id"),
                "previous_release_id": res.get("previous_release_id"), "swap_method": res.get("swap_method")}

    def unmount(self, root: str, mounted_here: bool, result: dict[str, Any]) -> None:
        """Leave the mount as it was found."""
        if not mounted_here:
            return
        with self.for_real():
            res = transport.ask_again("unmount (efs_mount)", lambda: self._execute_module(
                module_name="efs_mount", module_args={"state": "unmounted", "path": root}, task_vars=self.task_vars))
        self.steps["unmount"] = {k: v for k, v in res.items() if k != "invocation"}
        if res.get("failed"):
            result.setdefault("warnings", []).append("EFS left mounted at %s: %s" % (root, res.get("msg")))
