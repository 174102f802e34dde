"""The lab's management instance: a long-lived Linux mount + PID + UTS namespace.

"Running" means the namespace exists: its PID 1 (instance_init.py) holds it
open, SSM sessions enter it with nsenter, and mounts made in it (EFS) are
invisible from the host. "Stopping" kills that PID 1: the kernel kills every
process in the PID namespace and the mounts vanish, as on a real stop. The
instance's root-disk stand-ins (/home, /root, /etc users, sudoers) are lab
directories bind-mounted over the host's, inside the namespace only: they
persist across stops like an EBS root volume; /tmp and /run are emptied at
each boot like tmpfs.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .state import CREDENTIALS, INSTANCE_USERS, LAB_PKG, LAB_SBIN, iam_credentials, lab_dir, load, pid_alive

SUDOERS = """\
# reefguide-efs lab instance: as on Amazon Linux 2023, ssm-user (SSM sessions)
# and ec2-user have passwordless sudo.
Defaults env_reset
Defaults secure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
root ALL=(ALL:ALL) ALL
ssm-user ALL=(ALL) NOPASSWD:ALL
ec2-user ALL=(ALL) NOPASSWD:ALL
"""

MOUNTEFS = "sudo mount -t efs -o tls,iam {fs_id} /home/ec2-user/efs/\n"


class InstanceError(RuntimeError):
    pass


def instance_root(instance_id: str) -> Path:
    return lab_dir() / "instances" / instance_id


def efs_storage() -> Path:
    return lab_dir() / "efs"


def _free_ids(count: int, start: int = 3000) -> list[int]:
    used = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    ids, n = [], start
    while len(ids) < count:
        if n not in used:
            ids.append(n)
        n += 1
    return ids


def hostname_for(instance_id: str) -> str:
    """A stable EC2-style private host name for the instance."""
    n = sum(instance_id.encode())
    return "ip-10-0-%d-%d" % (n % 250, n % 199 + 10)


def provision(instance_id: str, fs_id: str) -> Path:
    """Create the instance's root-disk stand-ins once (what the AMI and the
    stack's user data provide on a real instance)."""
    root = instance_root(instance_id)
    if (root / ".provisioned").exists():
        return root
    for sub in ("etc", "home", "root/.aws", "tmp", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)

    ids = _free_ids(len(INSTANCE_USERS))
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    shadow = Path("/etc/shadow").read_text() if os.path.exists("/etc/shadow") else ""
    for name, uid in zip(INSTANCE_USERS, ids):
        passwd += "%s:x:%d:%d::/home/%s:/bin/bash\n" % (name, uid, uid, name)
        group += "%s:x:%d:\n" % (name, uid)
        shadow += "%s:!!:19000:0:99999:7:::\n" % name
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(group)
    (root / "etc" / "shadow").write_text(shadow)
    os.chmod(root / "etc" / "shadow", 0o640)
    (root / "etc" / "hosts").write_text(
        Path("/etc/hosts").read_text() + "127.0.1.1 %s\n" % hostname_for(instance_id))
    (root / "etc" / "sudoers").write_text(SUDOERS)
    os.chmod(root / "etc" / "sudoers", 0o440)

    # The instance role's credentials: a real instance gets them from IMDS.
    aws_cfg = "[default]\nregion = %s\n" % os.environ.get("AWS_REGION", "ap-southeast-2")
    aws_creds = "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    homes = {"root": (root / "root", 0, 0)}
    for name, uid in zip(INSTANCE_USERS, ids):
        homes[name] = (root / "home" / name, uid, uid)
    for home, uid, gid in homes.values():
        (home / ".aws").mkdir(parents=True, exist_ok=True)
        (home / ".aws" / "config").write_text(aws_cfg)
        (home / ".aws" / "credentials").write_text(aws_creds)
        for dirpath, _dirs, files in os.walk(home):
            os.chown(dirpath, uid, gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), uid, gid)
        os.chmod(home, 0o700)

    # What the stack's user data leaves in ec2-user's home.
    ec2 = root / "home" / "ec2-user"
    (ec2 / "efs").mkdir(exist_ok=True)
    (ec2 / "mountefs.sh").write_text(MOUNTEFS.format(fs_id=fs_id))
    os.chmod(ec2 / "mountefs.sh", 0o755)
    ec2_uid = homes["ec2-user"][1]
    for p in (ec2 / "efs", ec2 / "mountefs.sh"):
        os.chown(p, ec2_uid, ec2_uid)
    (root / ".provisioned").write_text(str(time.time()))
    return root


def provision_efs(fs_id: str) -> Path:
    """The file system's storage; user data creates data/reefguide/cache as root."""
    store = efs_storage() / fs_id
    (store / "data" / "reefguide" / "cache").mkdir(parents=True, exist_ok=True)
    return store


def write_role_credentials(instance_id: str) -> None:
    """The instance role's keys, as IMDS hands them out at each boot: the
    reefguide-instance user's under `labctl up --iam` (iam/instance-policy.json),
    else moto's anonymous ones."""
    root = instance_root(instance_id)
    creds = iam_credentials(load(), "reefguide-instance") or CREDENTIALS
    text = "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (
        creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"])
    for home in [root / "root"] + [root / "home" / name for name in INSTANCE_USERS]:
        path = home / ".aws" / "credentials"
        if path.parent.is_dir():
            path.write_text(text)
            st = home.stat()
            os.chown(path, st.st_uid, st.st_gid)


def boot(instance_id: str) -> int:
    """Start the namespace; returns the host pid of its PID 1."""
    root = instance_root(instance_id)
    write_role_credentials(instance_id)
    for volatile in ("tmp", "run"):
        shutil.rmtree(root / volatile, ignore_errors=True)
        (root / volatile).mkdir()
    os.chmod(root / "tmp", 0o1777)
    log = open(lab_dir() / "logs" / ("instance-%s.log" % instance_id), "ab")
    proc = subprocess.Popen(
        [
            "unshare", "--mount", "--pid", "--uts", "--fork", "--kill-child",
            "--propagation", "private", "--mount-proc",
            "/usr/bin/python3", str(LAB_PKG / "instance_init.py"),
            str(root), str(efs_storage()), str(LAB_SBIN), instance_id, hostname_for(instance_id),
        ],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    log.close()
    ready = root / "run" / "reefguide-lab" / "ready"
    deadline = time.time() + 20
    while time.time() < deadline:
        if ready.exists():
            return _child_pid(proc.pid)
        if proc.poll() is not None:
            raise InstanceError("instance %s failed to boot; see %s" % (instance_id, log.name))
        time.sleep(0.02)
    proc.kill()
    raise InstanceError("instance %s did not boot within 20 s; see %s" % (instance_id, log.name))


def _child_pid(pid: int) -> int:
    """unshare --fork runs PID 1 as its only child: that child's host pid."""
    children = Path("/proc/%d/task/%d/children" % (pid, pid)).read_text().split()
    if len(children) != 1:
        raise InstanceError("expected one child of unshare %d, found %r" % (pid, children))
    return int(children[0])


def halt(init_pid: int) -> None:
    """Kill the instance's PID 1: the kernel ends everything inside it."""
    if pid_alive(init_pid):
        os.kill(init_pid, signal.SIGKILL)
    deadline = time.time() + 10
    while pid_alive(init_pid) and time.time() < deadline:
        time.sleep(0.02)


def nsenter_argv(init_pid: int) -> list[str]:
    return ["nsenter", "--target", str(init_pid), "--mount", "--pid", "--uts", "--"]


def mountinfo(init_pid: int) -> str:
    try:
        return Path("/proc/%d/mountinfo" % init_pid).read_text()
    except OSError:
        return ""
