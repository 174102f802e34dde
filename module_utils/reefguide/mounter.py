# efs_mount's engine: one call observes what is mounted at the path, decides, mounts or
# unmounts (never over anything, never killing a holder), keeps /etc/fstab if asked, reports.
# Stands apart from the release engine: it only needs the mount tables and the user database.

from __future__ import annotations

import os
from typing import Any, Optional

from ansible.module_utils.reefguide.mount_holders import describe_holders, processes_using
from ansible.module_utils.reefguide.mount_table import (
    FS_ID_RE,
    STATE_DIR,
    IdentifyError,
    MountEntry,
    fstab_entries_for,
    fstab_line,
    fstab_update,
    identify_fs,
    merged_options,
    mount_at,
    mounts_below,
    read_mountinfo,
)
from ansible.module_utils.reefguide.users import UnknownUserError, group_name, home_of, resolve_ids, user_name

MOUNT_HELPERS = ("/sbin/mount.efs", "/usr/sbin/mount.efs")
INSTALL_HINT = "amazon-efs-utils is not installed: dnf install -y amazon-efs-utils"


class EfsError(Exception):
    """An efs_mount step cannot go ahead; msg says why and what to do,
    result holds what the call had found and done so far."""

    def __init__(self, msg: str, result: Optional[dict[str, Any]] = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.result = dict(result or {})



def default_path(user: str, home: Optional[str]) -> str:
    return os.path.join(home or home_of(user), "efs")


def observe(path: str, state_dir: str) -> dict[str, Any]:
    """What is at path now: mount (and which file system), plain dir, owner."""
    real = os.path.realpath(path)
    entry = mount_at(read_mountinfo(), real)
    info: dict[str, Any] = {
        "mounted": entry is not None,
        "entry": entry,
        "fs_id": None,
        "identified_by": None,
        "identify_error": None,
        "exists": os.path.lexists(path),
        "owner": None,
        "group": None,
    }
    if entry is not None:
        try:
            info["fs_id"], info["identified_by"] = identify_fs(entry, [path, real], state_dir)
        except IdentifyError as exc:
            info["identify_error"] = str(exc)
    if os.path.isdir(path):
        st = os.stat(path)
        info["owner"], info["group"] = user_name(st.st_uid), group_name(st.st_gid)
    return info



def diff_view(info: dict[str, Any], fstab: Optional[str]) -> dict[str, Any]:
    return {
        "mounted": info["mounted"],
        "fs_id": info["fs_id"],
        "owner": info["owner"],
        "group": info["group"],
        "fstab_line": fstab,
    }


class Mounter:
    """One efs_mount call: observe, decide, act (unless check mode), report."""

    def __init__(self, host: Any, params: dict[str, Any], check: bool, diff: bool) -> None:
        self.host = host
        self.p = params
        self.check = check
        self.diff = diff
        self.path = self.p["path"] or default_path(self.p["user"], self.p["home"])
        if not os.path.isabs(self.path):
            raise EfsError("path %r must be absolute" % self.path)
        self.path = os.path.normpath(self.path)
        if self.path == "/":
            raise EfsError("refusing to mount on or unmount /")
        self.result: dict[str, Any] = {
            "changed": False,
            "path": self.path,
            "mounted_by_this_call": False,
            "unmounted_by_this_call": False,
            "lazy_unmount": False,
            "owner_changed": False,
            "created_mount_point": False,
            "fstab_line": None,
            "fstab_changed": False,
        }

    def fail(self, msg: str, **extra: Any) -> None:
        self.result.update(extra)
        self.result.pop("changed", None)
        raise EfsError(msg, self.result)

    # -- mounted -----------------------------------------------------------

    def ensure_mounted(self, before: dict[str, Any]) -> dict[str, Any]:
        fs_id = self.p["fs_id"]
        if before["mounted"]:
            if before["identify_error"]:
                self.fail(before["identify_error"] + "; refusing to mount %s over it" % fs_id)
            if before["fs_id"] != fs_id:
                self.fail(
                    "%s already has file system %s mounted (source %s); refusing to mount %s over it: "
                    "unmount it first (state: unmounted) or choose another path"
                    % (self.path, before["fs_id"], before["entry"].source, fs_id)
                )
            after = dict(before)
        else:
            self.require_helper()
            self.require_empty_dir()
            self.mount(fs_id)
            after = self.observe_after_mount(fs_id)
        self.ensure_owner(after, just_mounted=not before["mounted"])
        return after

    def require_helper(self) -> None:
        if not any(os.access(h, os.X_OK) for h in MOUNT_HELPERS):
            self.fail(INSTALL_HINT + " (no %s for 'mount -t efs')" % MOUNT_HELPERS[0])

    def require_empty_dir(self) -> None:
        if not os.path.lexists(self.path):
            return
        if not os.path.isdir(self.path):
            self.fail("%s exists and is not a directory; refusing to mount over it" % self.path)
        entries = sorted(os.listdir(self.path))
        if entries:
            self.fail(
                "%s is a non-empty directory that is not a mount point (%d entries, e.g. %s); refusing to "
                "mount over it: move its contents away or choose another path"
                % (self.path, len(entries), ", ".join(entries[:5]))
            )

    def mount(self, fs_id: str) -> None:
        self.result["changed"] = True
        self.result["mounted_by_this_call"] = True
        if not os.path.lexists(self.path):
            self.result["created_mount_point"] = True
            if not self.check:
                os.makedirs(self.path, 0o755)
                self.chown(self.path)
        if self.check:
            return
        argv = ["mount", "-t", "efs", "-o", self.p["options"], fs_id, self.path]
        rc, out, err = self.host.run_command(argv)
        if rc != 0:
            self.result["mounted_by_this_call"] = False
            text = (err or out).strip() or "no output"
            self.fail("mounting %s at %s failed (mount rc %d): %s" % (fs_id, self.path, rc, text))

    def observe_after_mount(self, fs_id: str) -> dict[str, Any]:
        if self.check:
            return {"mounted": True, "entry": None, "fs_id": fs_id, "identified_by": "requested",
                    "identify_error": None, "owner": None, "group": None, "exists": True}
        after = observe(self.path, self.p["state_dir"])
        if not after["mounted"]:
            self.fail("mount reported success but %s is not a mount point afterwards" % self.path)
        if after["identify_error"]:
            self.host.warn(after["identify_error"] + " (just mounted %s there)" % fs_id)
            after["fs_id"], after["identified_by"] = fs_id, "requested"
        elif after["fs_id"] != fs_id:
            self.fail("mounted %s at %s but %s is mounted there now" % (fs_id, self.path, after["fs_id"]))
        return after

    def chown(self, path: str) -> bool:
        uid = self.wanted_uid if self.wanted_uid is not None else -1
        gid = self.wanted_gid if self.wanted_gid is not None else -1
        st = os.stat(path)
        if (uid in (-1, st.st_uid)) and (gid in (-1, st.st_gid)):
            return False
        if not self.check:
            os.chown(path, uid, gid)
        return True

    def ensure_owner(self, after: dict[str, Any], just_mounted: bool) -> None:
        if self.wanted_uid is None and self.wanted_gid is None:
            return
        if self.check and just_mounted:
            # Check mode before mounting: the EFS root's owner is unknown.
            self.result["owner_changed"] = None
        elif self.chown(self.path):
            self.result["owner_changed"] = True
            self.result["changed"] = True
        if self.p["owner"] is not None:
            after["owner"] = user_name(self.wanted_uid)
        if self.p["group"] is not None:
            after["group"] = group_name(self.wanted_gid)

    # -- unmounted ---------------------------------------------------------

    def ensure_unmounted(self, before: dict[str, Any]) -> dict[str, Any]:
        if not before["mounted"]:
            return dict(before, fs_id=None, identified_by=None)
        fs_id = self.p["fs_id"]
        if fs_id and before["identify_error"]:
            self.fail(before["identify_error"] + "; refusing to unmount it as %s" % fs_id)
        if fs_id and before["fs_id"] != fs_id:
            self.fail(
                "%s has file system %s mounted, not %s; refusing to unmount it"
                % (self.path, before["fs_id"], fs_id)
            )
        self.result["changed"] = True
        self.result["unmounted_by_this_call"] = True
        if self.check:
            self.predict_busy()
        else:
            self.unmount()
        return {"mounted": False, "entry": None, "fs_id": None, "identified_by": None,
                "identify_error": None, "owner": None, "group": None, "exists": True}

    def holders(self) -> tuple[list[dict[str, Any]], list[MountEntry]]:
        real = os.path.realpath(self.path)
        return processes_using(real), mounts_below(read_mountinfo(), real)

    def refuse_busy(self, holders: list[dict[str, Any]], submounts: list[MountEntry], detail: str) -> None:
        self.result["unmounted_by_this_call"] = False
        self.fail(
            "%s is busy (%s), held by: %s. Stop those processes (or leave the directory), or set "
            "force: true to detach it lazily (umount -l)"
            % (self.path, detail, describe_holders(holders, submounts)),
            holders=holders,
        )

    def predict_busy(self) -> None:
        holders, submounts = self.holders()
        self.result["holders"] = holders
        if holders or submounts:
            if not self.p["force"]:
                self.refuse_busy(holders, submounts, "check mode")
            self.result["lazy_unmount"] = True

    def unmount(self) -> None:
        rc, out, err = self.host.run_command(["umount", self.path])
        if rc == 0:
            self.result["holders"] = []
            return
        text = (err or out).strip()
        if "busy" not in text.lower():
            self.result["unmounted_by_this_call"] = False
            self.fail("unmounting %s failed (umount rc %d): %s" % (self.path, rc, text or "no output"))
        holders, submounts = self.holders()
        self.result["holders"] = holders
        if not self.p["force"]:
            self.refuse_busy(holders, submounts, text)
        rc, out, err = self.host.run_command(["umount", "-l", self.path])
        if rc != 0:
            self.result["unmounted_by_this_call"] = False
            self.fail("lazy unmount of %s failed (umount -l rc %d): %s" % (self.path, rc, (err or out).strip()))
        self.result["lazy_unmount"] = True

    # -- fstab -------------------------------------------------------------

    def manage_fstab(self, mounted: bool) -> Optional[str]:
        """Returns the line now managed (None when removed or not managed)."""
        if not self.p["fstab"]:
            return None
        line = fstab_line(self.p["fs_id"], self.path, self.p["options"]) if mounted else None
        fstab = self.p["fstab_file"]
        try:
            with open(fstab) as fh:
                old = fh.read()
        except FileNotFoundError:
            old = ""
        new = fstab_update(old, self.path, line)
        if new != old:
            self.result["changed"] = True
            self.result["fstab_changed"] = True
            if not self.check:
                self.host.atomic_move(self.write_temp(new, fstab), fstab)
        self.result["fstab_line"] = line
        return line

    def write_temp(self, text: str, dest: str) -> str:
        tmp = "%s.efs_mount.%d" % (dest, os.getpid())
        with open(tmp, "w") as fh:
            fh.write(text)
        return tmp

    def current_fstab_line(self) -> Optional[str]:
        if not self.p["fstab"]:
            return None
        try:
            with open(self.p["fstab_file"]) as fh:
                lines = fstab_entries_for(fh.read(), self.path)
        except FileNotFoundError:
            return None
        return "\n".join(lines) if lines else None

    # -- main --------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        p = self.p
        if p["state"] == "mounted" and not p["fs_id"]:
            self.fail("fs_id is required with state: mounted")
        if p["fs_id"] and not FS_ID_RE.match(p["fs_id"]):
            self.fail("fs_id %r is not an EFS file system id (fs- followed by hex digits)" % p["fs_id"])
        if not p["options"] or any(c.isspace() for c in p["options"]):
            self.fail("options %r must be a non-empty comma-separated list without spaces" % p["options"])
        try:
            self.wanted_uid, self.wanted_gid = resolve_ids(p["owner"], p["group"])
        except UnknownUserError as exc:
            self.fail(str(exc))
        before = observe(self.path, p["state_dir"])
        fstab_before = self.current_fstab_line()
        self.result.update(mounted_before=before["mounted"], fs_id_before=before["fs_id"])
        ensure = self.ensure_mounted if p["state"] == "mounted" else self.ensure_unmounted
        after = ensure(before)
        fstab_after = self.manage_fstab(p["state"] == "mounted")
        return self.report(before, after, fstab_before, fstab_after)

    def report(self, before: dict[str, Any], after: dict[str, Any], fstab_before: Optional[str],
               fstab_after: Optional[str]) -> dict[str, Any]:
        entry = after.get("entry")
        if entry is not None and not self.check:
            # Re-read: chown does not change the mount, but be exact about what is there now.
            entry = mount_at(read_mountinfo(), os.path.realpath(self.path)) or entry
        if not after["mounted"] and os.path.isdir(self.path):
            st = os.stat(self.path)
            after["owner"], after["group"] = user_name(st.st_uid), group_name(st.st_gid)
        self.result.update(
            fs_id=after["fs_id"],
            identified_by=after["identified_by"],
            source=entry.source if entry else None,
            fstype=entry.fstype if entry else None,
            options=merged_options(entry) if entry else None,
            owner=after["owner"],
            group=after["group"],
        )
        if self.diff:
            self.result["diff"] = {
                "before_header": self.path,
                "after_header": self.path,
                "before": diff_view(before, fstab_before if self.p["fstab"] else None),
                "after": diff_view(after, fstab_after if self.p["fstab"] else None),
            }
        return self.result


EFS_MOUNT_ARGS: dict[str, Any] = dict(
    state=dict(type="str", choices=["mounted", "unmounted"], default="mounted"),
    fs_id=dict(type="str"),
    path=dict(type="path"),
    user=dict(type="str", default="ec2-user"),
    home=dict(type="path"),
    options=dict(type="str", default="tls,iam"),
    owner=dict(type="str"),
    group=dict(type="str"),
    force=dict(type="bool", default=False),
    fstab=dict(type="bool", default=False),
    fstab_file=dict(type="path", default="/etc/fstab"),
    state_dir=dict(type="path", default=STATE_DIR),
)


def run_efs_mount(host: Any, params: dict[str, Any], check: bool = False, diff: bool = False) -> dict[str, Any]:
    """Do what efs_mount does and return its result dict. host provides
    run_command(argv), warn(msg) and atomic_move(src, dest) (an
    AnsibleModule does); params are efs_mount's (see with_defaults).
    Raises EfsError (message plus the partial result) on failure."""
    return Mounter(host, params, check, diff).run()
