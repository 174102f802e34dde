"""mount_table.py on samples: mountinfo parsing, which file system a mount is (efs-utils state
files in a temporary directory), fstab text. No mount, no lab, no ansible run."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.module_utils.reefguide.mount_table import (
    IdentifyError,
    fs_id_from_source,
    fstab_entries_for,
    fstab_escape,
    fstab_line,
    fstab_update,
    identify_fs,
    merged_options,
    mount_at,
    mount_path_key,
    mounts_below,
    parse_mountinfo,
    state_file_name,
)

FS_A = "fs-0123456789abcdef0"
FS_B = "fs-0fedcba987654321f"
ROOT_LINE = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"


def tls_line(mount_id: int, path: str, port: int) -> str:
    return ("%d 27 0:52 / %s rw,relatime shared:100 master:3 - nfs4 127.0.0.1:/ rw,vers=4.1,hard,"
            "proto=tcp,port=%d,timeo=600,addr=127.0.0.1\n" % (mount_id, path, port))


def state_dir(tmp_path: Path, *names: str) -> str:
    for name in names:
        (tmp_path / name).write_text("{}")
    return str(tmp_path)


def test_mountinfo_fields_escapes_and_optional_fields() -> None:
    text = ROOT_LINE + tls_line(120, "/home/ec2-user/a\\011tab\\012nl\\134bs\\040sp", 20049)
    entry = parse_mountinfo(text)[1]
    assert entry.mount_point == "/home/ec2-user/a\ttab\nnl\\bs sp"
    assert entry.optional == ["shared:100", "master:3"]
    assert (entry.mount_id, entry.parent_id, entry.fstype, entry.source) == (120, 27, "nfs4", "127.0.0.1:/")
    assert entry.option("port") == "20049" and entry.option("relatime") is None and entry.option("nope") is None
    assert merged_options(entry).split(",")[:2] == ["rw", "relatime"]
    assert merged_options(entry).count("rw") == 1


def test_malformed_lines_are_skipped_and_bytes_that_are_not_utf8_survive() -> None:
    raw = b"garbage\n1 2 3\n" + ROOT_LINE.encode() + b"130 27 0:60 / /mnt/caf\xe9 rw - ext4 /dev/x rw\n"
    entries = parse_mountinfo(raw)
    assert [e.mount_id for e in entries] == [27, 130]
    assert entries[1].mount_point.encode("utf-8", "surrogateescape") == b"/mnt/caf\xe9"


def test_mounts_below_and_mount_at() -> None:
    entries = parse_mountinfo(ROOT_LINE + tls_line(120, "/efs", 20049) + tls_line(121, "/efs/sub", 20050)
                              + tls_line(122, "/efs2", 20051))
    assert [e.mount_point for e in mounts_below(entries, "/efs")] == ["/efs/sub"]
    assert mount_at(entries, "/efs/sub").mount_id == 121 and mount_at(entries, "/efs/other") is None


@pytest.mark.parametrize(
    "source, fs_id",
    [
        (FS_A + ":/", FS_A),
        (FS_A + ".efs.ap-southeast-2.amazonaws.com:/data", FS_A),
        ("ap-southeast-2a." + FS_A + ".efs.ap-southeast-2.amazonaws.com:/", FS_A),  # one-zone file system
        ("127.0.0.1:/", None),
        ("fs-XYZ:/", None),
        ("/dev/vda", None),
    ],
)
def test_fs_id_from_source(source: str, fs_id: str) -> None:
    assert fs_id_from_source(source) == fs_id


def test_state_file_names_as_efs_utils_writes_them() -> None:
    assert mount_path_key("/home/ec2-user/efs") == "home.ec2-user.efs"
    assert state_file_name(FS_A, "/home/ec2-user/efs/", 20049) == FS_A + ".home.ec2-user.efs.20049"


def test_tls_mount_under_another_spelling_of_its_path_is_found_by_its_port(tmp_path: Path) -> None:
    # efs-utils named the state file after the path the user typed (a symlink to the mount point)
    states = state_dir(tmp_path, state_file_name(FS_A, "/home/ec2-user/efs", 20049),
                       state_file_name(FS_B, "/srv/other", 20050))
    entry = parse_mountinfo(ROOT_LINE + tls_line(120, "/mnt/real-efs", 20049))[1]
    assert identify_fs(entry, ["/mnt/real-efs"], states) == (FS_A, "state_file_port")


def test_state_files_that_are_not_efs_utils_ones_are_ignored(tmp_path: Path) -> None:
    states = state_dir(tmp_path, "stunnel-config.home.ec2-user.efs", "fs-nothex.home.ec2-user.efs.20049",
                       FS_A + ".home.ec2-user.efs.notaport", state_file_name(FS_B, "/home/ec2-user/efs", 20049))
    entry = parse_mountinfo(ROOT_LINE + tls_line(120, "/home/ec2-user/efs", 20049))[1]
    assert identify_fs(entry, ["/home/ec2-user/efs"], states) == (FS_B, "state_file_port")


def test_a_missing_state_directory_is_an_error_not_a_guess(tmp_path: Path) -> None:
    entry = parse_mountinfo(ROOT_LINE + tls_line(120, "/home/ec2-user/efs", 20049))[1]
    with pytest.raises(IdentifyError, match="no efs-utils state file with port 20049"):
        identify_fs(entry, ["/home/ec2-user/efs"], str(tmp_path / "absent"))


def test_two_state_files_on_one_port_are_an_error(tmp_path: Path) -> None:
    states = state_dir(tmp_path, state_file_name(FS_A, "/a", 20049), state_file_name(FS_B, "/b", 20049))
    entry = parse_mountinfo(ROOT_LINE + tls_line(120, "/c", 20049))[1]
    with pytest.raises(IdentifyError, match="several"):
        identify_fs(entry, ["/c"], states)


def test_fstab_escape_spells_what_fstab_cannot_hold() -> None:
    assert fstab_escape("/a b\tc\nd\\e") == "/a\\040b\\011c\\012d\\134e"


def test_fstab_line_adds_netdev_once() -> None:
    assert fstab_line(FS_A, "/efs", "tls,iam") == FS_A + ":/ /efs efs _netdev,tls,iam 0 0"
    assert fstab_line(FS_A, "/efs", "tls,_netdev,,iam") == FS_A + ":/ /efs efs tls,_netdev,iam 0 0"


def test_fstab_update_keeps_comments_and_others_and_collapses_duplicates() -> None:
    text = ("# /efs was here\n#" + FS_B + ":/ /efs efs tls 0 0\nUUID=1 / ext4 defaults 0 1\n"
            + FS_B + ":/ /efs efs tls 0 0\n" + FS_B + ":/  /efs\tefs iam 0 0\n/dev/x /efs2 ext4 rw 0 0")
    line = fstab_line(FS_A, "/efs", "tls")
    updated = fstab_update(text, "/efs", line)
    assert updated == ("# /efs was here\n#" + FS_B + ":/ /efs efs tls 0 0\nUUID=1 / ext4 defaults 0 1\n"
                       + line + "\n/dev/x /efs2 ext4 rw 0 0")
    assert fstab_entries_for(updated, "/efs") == [line]
    removed = fstab_update(updated, "/efs", None)
    assert fstab_entries_for(removed, "/efs") == [] and "/efs2" in removed and removed.startswith("# /efs")
    appended = fstab_update("/dev/x /efs2 ext4 rw 0 0", "/efs", line)
    assert appended == "/dev/x /efs2 ext4 rw 0 0\n" + line + "\n"
