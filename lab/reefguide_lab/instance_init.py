"""PID 1 of a lab instance (run by unshare in fresh mount/PID/UTS namespaces).

Lays the instance's own files over the host's, inside this namespace only,
then waits, reaping orphans, until the lab stops the instance by killing it.
Standard library only: it runs on the system python, like the instance's
other tools.
"""

import os
import signal
import socket
import subprocess
import sys
import time


def run(*argv):
    subprocess.run(list(argv), check=True)


def bind(src, dst):
    run("mount", "--bind", src, dst)


def main(root, efs_storage, sbin_extra, instance_id, hostname):
    run("mount", "--make-rprivate", "/")
    # The lab's directories may sit under /tmp, /home or /root, which are
    # about to be covered: pin them under a private scratch mount first.
    stage = "/mnt"
    run("mount", "-t", "tmpfs", "-o", "size=1m", "lab-stage", stage)
    for name, src in (("root", root), ("efs", efs_storage), ("sbin", sbin_extra)):
        os.mkdir(os.path.join(stage, name))
        bind(src, os.path.join(stage, name))
    root, efs_storage, sbin_extra = (os.path.join(stage, n) for n in ("root", "efs", "sbin"))

    for name in ("passwd", "group", "shadow", "sudoers", "hosts"):
        bind(os.path.join(root, "etc", name), "/etc/" + name)
    for d in ("home", "root", "tmp", "run"):
        bind(os.path.join(root, d), "/" + d)
    # What amazon-efs-utils installs (the mount.efs helper), laid over
    # /usr/sbin without touching the host's copy.
    run("mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s:/usr/sbin" % sbin_extra, "/usr/sbin")
    # The lab's EFS storage, where the lab's mount.efs finds file systems.
    lab_run = "/run/reefguide-lab"
    os.makedirs(lab_run + "/efs-storage", exist_ok=True)
    os.makedirs("/run/efs", exist_ok=True)
    bind(efs_storage, lab_run + "/efs-storage")
    run("umount", "--lazy", stage)
    socket.sethostname(hostname)
    with open(lab_run + "/instance-id", "w") as fh:
        fh.write(instance_id)
    with open(lab_run + "/ready", "w") as fh:
        fh.write(str(time.time()))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.5)


if __name__ == "__main__":
    main(*sys.argv[1:6])
