#!/usr/bin/python
# -*- coding: utf-8 -*-
# Runs on the management instance (with become): Python 3.9, stdlib only.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: efs_mount
short_description: Mount or unmount the ReefGuide EFS file system on the management instance
description:
  - Mounts an EFS file system with the C(amazon-efs-utils) mount helper, the way the stack's
    C(~/mountefs.sh) does (C(mount -t efs -o tls,iam <fs-id> ~/efs)), or unmounts it.
  - Tells B(which) file system is mounted at the path even when efs-utils shows C(127.0.0.1:/)
    as the source (TLS mounts go through a local stunnel port). It reads C(/proc/self/mountinfo)
    (the last entry for a mount point wins) and then, in this order, uses the source when it names
    the file system (C(fs-xxx:/), C(fs-xxx.efs.<region>.amazonaws.com:/)); for C(127.0.0.1:/) with
    C(port=N), the efs-utils state file C(<state_dir>/<fs-id>.<mount path with / as .>.<N>); failing
    both, the one state file whose name encodes this mount path (the lab's stand-in helper
    bind-mounts storage and carries no port). Several or no candidates is an error, never a guess.
  - Never mounts over anything. A different file system at the path, or a plain directory that is
    not empty, fails and leaves the path untouched.
  - Unmounting refuses while the mount is busy unless O(force=true), and names the processes
    (pid and command) whose working directory, root, open or mapped files are under the mount,
    and any mounts below it. With O(force=true) a busy mount is detached lazily (C(umount -l));
    it disappears from the tree at once and the kernel finishes the unmount when the last user
    lets go. No process is killed.
  - C(/etc/fstab) is left alone unless O(fstab=true).
version_added: "0.1.0"
author: reefguide-efs contributors
options:
  state:
    description:
      - V(mounted) mounts O(fs_id) at O(path) unless it is already mounted there.
      - V(unmounted) unmounts whatever file system is at O(path) (only O(fs_id) if given).
    type: str
    choices: [mounted, unmounted]
    default: mounted
  fs_id:
    description:
      - The EFS file system id, C(fs-) followed by hex digits. Required for O(state=mounted).
      - With O(state=unmounted), if given, the module refuses to unmount a different file system.
    type: str
  path:
    description:
      - Absolute mount path. Default C(<home>/efs), as on the stack's instance.
    type: path
  user:
    description:
      - The operator account whose home holds the default mount path. C(ec2-user) on the Amazon
        Linux 2023 instance; the older Ubuntu stack used C(ubuntu).
    type: str
    default: ec2-user
  home:
    description:
      - Home directory of O(user). Default looked up in the password database, then C(/home/<user>).
    type: path
  options:
    description:
      - Mount options passed to C(mount -o), comma separated. C(tls) encrypts in transit and C(iam)
        authenticates with the instance role, as C(mountefs.sh) does.
    type: str
    default: tls,iam
  owner:
    description:
      - User name or uid that should own the root of the mounted file system (the upstream docs
        tell operators to C(chown) it by hand when root owns it). Changed after mounting if
        different. Not touched when omitted.
    type: str
  group:
    description:
      - Group name or gid for the root of the mounted file system; as O(owner).
    type: str
  force:
    description:
      - With O(state=unmounted), detach a busy mount lazily (C(umount -l)) instead of failing.
    type: bool
    default: false
  fstab:
    description:
      - Also manage the mount's line in O(fstab_file). With O(state=mounted) the line
        C(<fs-id>:/ <path> efs _netdev,<options> 0 0) is added or corrected; with
        O(state=unmounted) any line for O(path) is removed. V(false) never touches the file.
    type: bool
    default: false
  fstab_file:
    description:
      - The fstab to manage when O(fstab=true) (tests and chroots use another file).
    type: path
    default: /etc/fstab
  state_dir:
    description:
      - Directory where efs-utils keeps one state file per TLS mount.
    type: path
    default: /var/run/efs
notes:
  - Needs root (C(become)) to mount, unmount, chown and to see other users' processes.
  - Requires C(amazon-efs-utils), which installs the C(/sbin/mount.efs) helper that C(mount -t efs)
    runs. Check mode predicts failures the same way (missing helper, wrong file system, non-empty
    directory, busy mount). Busy detection in check mode scans processes and sub-mounts; a real
    run asks the kernel.
  - Supports C(--check) and C(--diff) (the path's state before and after).
"""

EXAMPLES = r"""
- name: Mount the deployment's EFS at ~ec2-user/efs, owned by ec2-user
  efs_mount:
    fs_id: "{{ deployment.efs_id }}"
    owner: ec2-user
    group: ec2-user
  become: true
  register: efs

- name: Unmount it again if this play mounted it
  efs_mount:
    state: unmounted
    fs_id: "{{ deployment.efs_id }}"
  become: true
  when: efs.mounted_by_this_call

- name: Older Ubuntu stack, explicit path, persistent across reboots
  efs_mount:
    fs_id: fs-0123456789abcdef0
    user: ubuntu
    path: /home/ubuntu/efs
    fstab: true
  become: true

- name: Unmount even if a forgotten shell sits in it (lazy unmount)
  efs_mount:
    state: unmounted
    path: /home/ec2-user/efs
    force: true
  become: true
"""

RETURN = r"""
path:
  description: The mount path.
  returned: always
  type: str
  sample: /home/ec2-user/efs
fs_id:
  description: The file system mounted at the path after the call (predicted in check mode), null if none.
  returned: always
  type: str
  sample: fs-0123456789abcdef0
fs_id_before:
  description: The file system that was mounted at the path before the call, null if none.
  returned: always
  type: str
mounted_before:
  description: Whether something was mounted at the path before the call.
  returned: always
  type: bool
mounted_by_this_call:
  description: True when this call mounted the file system (so a play can unmount it to restore the state it found).
  returned: always
  type: bool
unmounted_by_this_call:
  description: True when this call unmounted the path.
  returned: always
  type: bool
lazy_unmount:
  description: True when a busy mount was detached with C(umount -l) because O(force=true).
  returned: always
  type: bool
identified_by:
  description: >-
    How the file system id was told: C(source), C(state_file_port) (efs-utils TLS mount),
    C(state_file_path) (state file named after the path), C(requested) (just mounted and could not
    be re-identified, or check mode), null when nothing is mounted.
  returned: always
  type: str
source:
  description: The kernel's mount source after the call (e.g. C(127.0.0.1:/) for a TLS mount).
  returned: always
  type: str
  sample: "127.0.0.1:/"
fstype:
  description: The kernel's file system type after the call (C(nfs4) on a real instance).
  returned: always
  type: str
options:
  description: The mount's options as the kernel shows them (per-mount and super-block), after the call.
  returned: always
  type: str
owner:
  description: Owner (user name, or uid if it has none) of the mount root after the call.
  returned: always
  type: str
group:
  description: Group of the mount root after the call.
  returned: always
  type: str
owner_changed:
  description: >-
    Whether the mount root's owner or group was changed (null in check mode when it cannot be
    known before mounting).
  returned: always
  type: bool
created_mount_point:
  description: Whether the mount point directory was created.
  returned: always
  type: bool
holders:
  description: Processes found holding a busy mount (pid, comm, uses).
  returned: when unmounting
  type: list
  elements: dict
  sample: [{"pid": 4242, "comm": "bash", "uses": ["cwd"]}]
fstab_line:
  description: The fstab line managed (null when O(fstab=false) or it was removed).
  returned: always
  type: str
  sample: "fs-0123456789abcdef0:/ /home/ec2-user/efs efs _netdev,tls,iam 0 0"
fstab_changed:
  description: Whether O(fstab_file) was (or in check mode would be) changed.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.reefguide.mounter import EFS_MOUNT_ARGS, EfsError, run_efs_mount


def main() -> None:
    module = AnsibleModule(argument_spec=EFS_MOUNT_ARGS, supports_check_mode=True)
    try:
        result = run_efs_mount(module, module.params, module.check_mode, module._diff)
    except EfsError as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
