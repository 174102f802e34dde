"""efs_mount: identification logic on mountinfo samples, and the module run
for real inside a private mount namespace with a stand-in /sbin/mount.efs
(overlaid on /usr/sbin in that namespace only) that bind-mounts storage
directories and writes an efs-utils style state file, as the lab does."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.reefguide.mount_table import (
    IdentifyError,
    fstab_entries_for,
    fstab_line,
    fstab_update,
    identify_fs,
    mount_at,
    parse_mountinfo,
    state_file_name,
)

from helpers import run_module

INSTANCE_PYTHON = "/usr/bin/python3"
FS_A = "fs-0123456789abcdef0"
FS_B = "fs-0fedcba987654321f"
FS_MISSING = "fs-00000000deadbeef1"

# --------------------------------------------------------------------------
# Identification on mountinfo text
# --------------------------------------------------------------------------

TLS_LINE = (
    "120 27 0:52 / /home/ec2-user/efs rw,relatime shared:100 - nfs4 127.0.0.1:/ "
    "rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,noresvport,proto=tcp,port=20049,"
    "timeo=600,retrans=2,sec=sys,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1\n"
)
PLAIN_LINE = (
    "121 27 0:53 / /mnt/plain rw,relatime shared:101 - nfs4 "
    "fs-0fedcba987654321f.efs.ap-southeast-2.amazonaws.com:/ rw,vers=4.1,hard,proto=tcp,"
    "timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.5,local_lock=none,addr=10.0.0.9\n"
)
SPACE_LINE = (
    "122 27 0:54 / /home/ec2-user/my\\040efs rw,relatime - nfs4 127.0.0.1:/ "
    "rw,vers=4.1,hard,proto=tcp,port=20051,timeo=600,addr=127.0.0.1\n"
)
HEADER = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
)


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def test_tls_mount_is_identified_through_its_port_and_state_file(tmp_path: Path) -> None:
    touch(tmp_path / state_file_name(FS_A, "/home/ec2-user/efs", 20049))
    # A stale state file of another mount on another port must not confuse it.
    touch(tmp_path / state_file_name(FS_B, "/home/ec2-user/efs", 20050))
    entry = mount_at(parse_mountinfo(HEADER + TLS_LINE), "/home/ec2-user/efs")
    assert entry is not None and entry.source == "127.0.0.1:/" and entry.option("port") == "20049"
    assert identify_fs(entry, ["/home/ec2-user/efs"], str(tmp_path)) == (FS_A, "state_file_port")


def test_tls_mount_without_its_state_file_is_not_guessed(tmp_path: Path) -> None:
    touch(tmp_path / state_file_name(FS_B, "/home/ec2-user/efs", 20050))
    entry = mount_at(parse_mountinfo(HEADER + TLS_LINE), "/home/ec2-user/efs")
    with pytest.raises(IdentifyError, match="cannot tell which file system is mounted at /home/ec2-user/efs"):
        identify_fs(entry, ["/home/ec2-user/efs"], str(tmp_path))


def test_non_tls_mount_is_identified_from_its_dns_source(tmp_path: Path) -> None:
    entry = mount_at(parse_mountinfo(HEADER + PLAIN_LINE), "/mnt/plain")
    assert identify_fs(entry, ["/mnt/plain"], str(tmp_path / "absent")) == (FS_B, "source")


def test_two_file_systems_are_told_apart(tmp_path: Path) -> None:
    touch(tmp_path / state_file_name(FS_A, "/home/ec2-user/efs", 20049))
    entries = parse_mountinfo(HEADER + TLS_LINE + PLAIN_LINE)
    assert identify_fs(mount_at(entries, "/home/ec2-user/efs"), ["/home/ec2-user/efs"], str(tmp_path))[0] == FS_A
    assert identify_fs(mount_at(entries, "/mnt/plain"), ["/mnt/plain"], str(tmp_path))[0] == FS_B
    assert mount_at(entries, "/home/ec2-user") is None


def test_path_with_a_space_is_unescaped_and_matched(tmp_path: Path) -> None:
    touch(tmp_path / state_file_name(FS_B, "/home/ec2-user/my efs", 20051))
    entries = parse_mountinfo(HEADER + SPACE_LINE)
    entry = mount_at(entries, "/home/ec2-user/my efs")
    assert entry is not None and entry.mount_point == "/home/ec2-user/my efs"
    assert identify_fs(entry, ["/home/ec2-user/my efs"], str(tmp_path)) == (FS_B, "state_file_port")


def test_last_entry_for_a_mount_point_wins(tmp_path: Path) -> None:
    over = PLAIN_LINE.replace("/mnt/plain", "/home/ec2-user/efs").replace("121 27", "130 120")
    entry = mount_at(parse_mountinfo(HEADER + TLS_LINE + over), "/home/ec2-user/efs")
    assert entry is not None and entry.mount_id == 130
    assert identify_fs(entry, ["/home/ec2-user/efs"], str(tmp_path)) == (FS_B, "source")


def test_bind_mount_without_port_needs_exactly_one_state_file(tmp_path: Path) -> None:
    line = "140 27 254:0 /srv/lab/efs/fs-0123456789abcdef0 /home/ec2-user/efs rw,relatime - ext4 /dev/vda rw\n"
    entry = mount_at(parse_mountinfo(HEADER + line), "/home/ec2-user/efs")
    with pytest.raises(IdentifyError, match="no efs-utils state file"):
        identify_fs(entry, ["/home/ec2-user/efs"], str(tmp_path))
    touch(tmp_path / state_file_name(FS_A, "/home/ec2-user/efs", 20049))
    touch(tmp_path / state_file_name(FS_A, "/home/ec2-user/efs-other", 20050))
    assert identify_fs(entry, ["/home/ec2-user/efs"], str(tmp_path)) == (FS_A, "state_file_path")
    touch(tmp_path / state_file_name(FS_B, "/home/ec2-user/efs", 20052))
    with pytest.raises(IdentifyError, match=r"several .* \(%s, %s\)" % (FS_A, FS_B)):
        identify_fs(entry, ["/home/ec2-user/efs"], str(tmp_path))


def test_fstab_line_is_added_once_replaced_and_removed() -> None:
    original = "# static table\nUUID=abc / ext4 defaults 0 1\n"
    line = fstab_line(FS_A, "/home/ec2-user/my efs", "tls,iam")
    assert line == FS_A + ":/ /home/ec2-user/my\\040efs efs _netdev,tls,iam 0 0"
    added = fstab_update(original, "/home/ec2-user/my efs", line)
    assert added == original + line + "\n"
    assert fstab_update(added, "/home/ec2-user/my efs", line) == added
    assert fstab_entries_for(added, "/home/ec2-user/my efs") == [line]
    other = fstab_line(FS_B, "/home/ec2-user/my efs", "tls,iam")
    assert fstab_update(added, "/home/ec2-user/my efs", other) == original + other + "\n"
    assert fstab_update(added, "/home/ec2-user/my efs", None) == original


# --------------------------------------------------------------------------
# The module, for real, in a private mount namespace
# --------------------------------------------------------------------------

STAND_IN = textwrap.dedent(
    '''\
    #!/usr/bin/python3
    # Test stand-in for amazon-efs-utils' mount.efs: mount.efs <fs-id> <dir> -o <options>.
    import os, subprocess, sys
    STORE = {store!r}
    STATE = {state!r}
    fs_id, mount_point = sys.argv[1], sys.argv[2]
    source = os.path.join(STORE, fs_id)
    if not os.path.isdir(source):
        sys.stderr.write('Failed to resolve "%s.efs.ap-southeast-2.amazonaws.com" - check that your '
                         'file system ID is correct.\\n' % fs_id)
        sys.exit(1)
    key = os.path.abspath(mount_point).replace("/", ".").lstrip(".")
    os.makedirs(STATE, exist_ok=True)
    for name in os.listdir(STATE):  # a new mount replaces a stale state file for the path
        if name.partition(".")[2].rpartition(".")[0] == key:
            os.unlink(os.path.join(STATE, name))
    rc = subprocess.call(["mount", "--bind", source, mount_point])
    if rc == 0:
        with open(os.path.join(STATE, "%s.%s.%d" % (fs_id, key, 20049)), "w") as fh:
            fh.write("{{}}")
    sys.exit(rc)
    '''
)


class Namespace:
    """A private mount namespace held open by a sleeping process."""

    def __init__(self, tmp: Path, overlay: bool) -> None:
        self.tmp = tmp
        self.store = tmp / "store"
        self.state_dir = tmp / "run-efs"
        self.home = tmp / "home" / "ec2-user"
        self.path = self.home / "efs"
        for fs_id in (FS_A, FS_B):
            (self.store / fs_id).mkdir(parents=True)
        self.home.mkdir(parents=True)
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "3600"])
        self.wait_for_namespace()
        self.children: list[subprocess.Popen] = []
        if overlay:
            sbin = tmp / "sbin"
            sbin.mkdir()
            helper = sbin / "mount.efs"
            helper.write_text(STAND_IN.format(store=str(self.store), state=str(self.state_dir)))
            helper.chmod(0o755)
            self.check_call(
                ["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s:/usr/sbin" % sbin, "/usr/sbin"]
            )

    def wait_for_namespace(self) -> None:
        own = os.readlink("/proc/self/ns/mnt")
        for _ in range(500):
            try:
                if os.readlink("/proc/%d/ns/mnt" % self.holder.pid) != own:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError("unshare did not create a mount namespace")

    @property
    def wrap(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"]

    def check_call(self, argv: list[str]) -> None:
        subprocess.run(self.wrap + argv, check=True)

    def mountinfo(self) -> str:
        return subprocess.run(self.wrap + ["cat", "/proc/self/mountinfo"], check=True,
                              capture_output=True, text=True).stdout

    def mounted_at(self, path: Path) -> bool:
        return mount_at(parse_mountinfo(self.mountinfo()), str(path)) is not None

    def spawn_in(self, cwd: Path) -> subprocess.Popen:
        """A process inside the namespace whose working directory is cwd."""
        proc = subprocess.Popen(self.wrap + ["sh", "-c", 'cd "$1" && exec sleep 3600', "sh", str(cwd)])
        self.children.append(proc)
        for _ in range(500):
            try:
                if os.readlink("/proc/%d/cwd" % proc.pid) == str(cwd):
                    return proc
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError("helper process did not reach %s" % cwd)

    def run(self, args: dict[str, Any], check: bool = False, diff: bool = False) -> dict[str, Any]:
        full = {"state_dir": str(self.state_dir), "home": str(self.home)}
        full.update(args)
        return run_module("efs_mount", full, check=check, diff=diff, python=INSTANCE_PYTHON, wrap=self.wrap)

    def close(self) -> None:
        for proc in self.children + [self.holder]:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def ns(tmp_path: Path):
    space = Namespace(tmp_path, overlay=True)
    try:
        yield space
    finally:
        space.close()


@pytest.fixture
def bare_ns(tmp_path: Path):
    space = Namespace(tmp_path, overlay=False)
    try:
        yield space
    finally:
        space.close()


def mount_a(ns: Namespace, check: bool = False, diff: bool = False, **extra: Any) -> dict[str, Any]:
    return ns.run(dict({"fs_id": FS_A}, **extra), check=check, diff=diff)


def test_mount_then_second_run_is_unchanged(ns: Namespace) -> None:
    first = mount_a(ns, owner="nobody")
    assert not first.get("failed"), first
    assert first["changed"] is True and first["mounted_by_this_call"] is True
    assert first["mounted_before"] is False
    assert first["path"] == str(ns.path)  # default: <home>/efs
    assert first["fs_id"] == FS_A and first["identified_by"] == "state_file_path"
    assert first["owner"] == "nobody" and first["owner_changed"] is True
    assert ns.mounted_at(ns.path)
    # What is written through the mount lands in that file system's storage.
    ns.check_call(["touch", str(ns.path / "written-through-mount")])
    assert (ns.store / FS_A / "written-through-mount").exists()
    assert os.stat(ns.store / FS_A).st_uid == 65534

    second = mount_a(ns, owner="nobody")
    assert not second.get("failed"), second
    assert second["changed"] is False
    assert second["mounted_by_this_call"] is False and second["mounted_before"] is True
    assert second["fs_id"] == FS_A and second["fs_id_before"] == FS_A
    # The mount was not stacked a second time.
    points = [e.mount_point for e in parse_mountinfo(ns.mountinfo())]
    assert points.count(str(ns.path)) == 1


def test_owner_change_on_an_existing_mount_is_reported(ns: Namespace) -> None:
    assert mount_a(ns)["changed"] is True
    chowned = mount_a(ns, group="nogroup")
    assert chowned["changed"] is True and chowned["owner_changed"] is True
    assert chowned["mounted_by_this_call"] is False
    assert chowned["group"] == "nogroup"


def test_check_mode_predicts_the_mount_and_changes_nothing(ns: Namespace) -> None:
    path = ns.tmp / "new" / "efs"
    predicted = ns.run({"fs_id": FS_A, "path": str(path)}, check=True, diff=True)
    assert not predicted.get("failed"), predicted
    assert predicted["changed"] is True and predicted["mounted_by_this_call"] is True
    assert predicted["created_mount_point"] is True and predicted["fs_id"] == FS_A
    assert predicted["diff"]["before"]["mounted"] is False and predicted["diff"]["after"]["mounted"] is True
    assert not path.exists() and not ns.mounted_at(path)

    real = ns.run({"fs_id": FS_A, "path": str(path)})
    for key in ("changed", "mounted_by_this_call", "created_mount_point", "fs_id", "mounted_before"):
        assert real[key] == predicted[key], key
    assert ns.mounted_at(path)
    again = ns.run({"fs_id": FS_A, "path": str(path)}, check=True)
    assert again["changed"] is False


def test_a_different_file_system_at_the_path_is_refused(ns: Namespace) -> None:
    assert mount_a(ns)["changed"] is True
    for check in (True, False):
        result = ns.run({"fs_id": FS_B}, check=check)
        assert result.get("failed"), result
        assert FS_A in result["msg"] and FS_B in result["msg"] and "refusing" in result["msg"]
    entry = mount_at(parse_mountinfo(ns.mountinfo()), str(ns.path))
    assert entry is not None and entry.root.endswith(FS_A)


def test_non_empty_plain_directory_is_refused_and_untouched(ns: Namespace) -> None:
    ns.path.mkdir()
    (ns.path / "precious.txt").write_text("keep me")
    for check in (True, False):
        result = mount_a(ns, check=check)
        assert result.get("failed"), result
        assert "non-empty directory" in result["msg"] and "precious.txt" in result["msg"]
    assert not ns.mounted_at(ns.path)
    assert sorted(os.listdir(ns.path)) == ["precious.txt"]
    assert (ns.path / "precious.txt").read_text() == "keep me"


def test_busy_unmount_is_refused_naming_the_process_then_force_detaches(ns: Namespace) -> None:
    assert mount_a(ns)["changed"] is True
    (ns.store / FS_A / "work").mkdir()
    sitter = ns.spawn_in(ns.path / "work")

    for check in (True, False):
        refused = ns.run({"state": "unmounted", "fs_id": FS_A}, check=check)
        assert refused.get("failed"), refused
        assert "busy" in refused["msg"] and "pid %d (sleep" % sitter.pid in refused["msg"]
        assert "force" in refused["msg"]
        assert any(h["pid"] == sitter.pid and h["uses"] == ["cwd"] for h in refused["holders"])
        assert ns.mounted_at(ns.path)

    predicted = ns.run({"state": "unmounted", "fs_id": FS_A, "force": True}, check=True)
    assert predicted["changed"] is True and predicted["lazy_unmount"] is True
    assert ns.mounted_at(ns.path)
    forced = ns.run({"state": "unmounted", "fs_id": FS_A, "force": True})
    assert not forced.get("failed"), forced
    assert forced["changed"] is True and forced["lazy_unmount"] is True
    assert forced["unmounted_by_this_call"] is True and forced["fs_id"] is None
    assert not ns.mounted_at(ns.path)
    assert sitter.poll() is None  # nobody was killed


def test_unmount_idle_mount_and_again_is_unchanged(ns: Namespace) -> None:
    assert mount_a(ns)["changed"] is True
    predicted = ns.run({"state": "unmounted"}, check=True)
    assert predicted["changed"] is True and predicted["lazy_unmount"] is False
    assert ns.mounted_at(ns.path)
    first = ns.run({"state": "unmounted"})
    assert first["changed"] is True and first["lazy_unmount"] is False
    assert first["fs_id_before"] == FS_A and first["mounted_before"] is True
    assert not ns.mounted_at(ns.path)
    second = ns.run({"state": "unmounted"})
    assert second["changed"] is False and second["unmounted_by_this_call"] is False


def test_unmount_of_another_file_system_is_refused(ns: Namespace) -> None:
    assert mount_a(ns)["changed"] is True
    result = ns.run({"state": "unmounted", "fs_id": FS_B})
    assert result.get("failed") and FS_A in result["msg"] and FS_B in result["msg"]
    assert ns.mounted_at(ns.path)


def test_unknown_file_system_passes_the_helper_error_through(ns: Namespace) -> None:
    result = ns.run({"fs_id": FS_MISSING})
    assert result.get("failed"), result
    assert "mounting %s at %s failed" % (FS_MISSING, ns.path) in result["msg"]
    assert "check that your file system ID is correct" in result["msg"]
    assert not ns.mounted_at(ns.path)


def test_missing_mount_helper_says_how_to_install_it(bare_ns: Namespace) -> None:
    for check in (True, False):
        result = bare_ns.run({"fs_id": FS_A}, check=check)
        assert result.get("failed"), result
        assert "amazon-efs-utils is not installed: dnf install -y amazon-efs-utils" in result["msg"]
    assert not bare_ns.path.exists()


def test_fstab_only_changes_when_asked(ns: Namespace) -> None:
    fstab = ns.tmp / "fstab"
    fstab.write_text("UUID=abc / ext4 defaults 0 1\n")
    plain = mount_a(ns, fstab_file=str(fstab))
    assert plain["fstab_changed"] is False and plain["fstab_line"] is None
    assert fstab.read_text() == "UUID=abc / ext4 defaults 0 1\n"

    managed = mount_a(ns, fstab=True, fstab_file=str(fstab))
    line = "%s:/ %s efs _netdev,tls,iam 0 0" % (FS_A, ns.path)
    assert managed["changed"] is True and managed["fstab_changed"] is True
    assert managed["mounted_by_this_call"] is False
    assert fstab.read_text() == "UUID=abc / ext4 defaults 0 1\n" + line + "\n"
    assert mount_a(ns, fstab=True, fstab_file=str(fstab))["changed"] is False

    removed = ns.run({"state": "unmounted", "fstab": True, "fstab_file": str(fstab)})
    assert removed["changed"] is True and removed["fstab_changed"] is True
    assert fstab.read_text() == "UUID=abc / ext4 defaults 0 1\n"


def test_mount_point_is_created_with_the_requested_owner(ns: Namespace) -> None:
    path = ns.tmp / "other home" / "efs with space"
    result = ns.run({"fs_id": FS_B, "path": str(path), "owner": "nobody", "group": "nogroup"}, diff=True)
    assert not result.get("failed"), result
    assert result["created_mount_point"] is True and result["fs_id"] == FS_B
    assert result["diff"]["after"] == {"mounted": True, "fs_id": FS_B, "owner": "nobody",
                                       "group": "nogroup", "fstab_line": None}
    assert ns.mounted_at(path)
    assert ns.run({"fs_id": FS_B, "path": str(path)})["changed"] is False

