# Constants, errors and name rules that every part of the S3 sync engine uses:
# kept apart so that the wire client, the scans, the manifest and the
# transfers can share them without importing one another.

from __future__ import annotations

import calendar
import hashlib
import os
import re
import threading
from typing import Any, Optional

from ansible.module_utils.reefguide.paths import UnsafePathError, safe_relpath

MiB = 1024 * 1024
MANIFEST_NAME = ".reefguide-manifest.json"
DEFAULT_CONCURRENCY = 16
DEFAULT_PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PART_SIZE = 5 * 1024 * MiB  # S3's ceiling for a part (5 GiB)
MAX_PARTS = 10000
IN_MEMORY_MAX = 1 * MiB  # bodies up to this are read once and sent from memory
BUFFER_SIZE = 1 * MiB  # streaming buffer per worker: memory ~ concurrency x this
TMP_MARK = "reefguide-tmp-"
# .<name>.reefguide-tmp-<run id> or, for names too long for that,
# .reefguide-tmp-<run id>-<hash of the name>
TMP_RE = re.compile(r"^\.(?:.*\.)?reefguide-tmp-[0-9a-f]{12}(?:-[0-9a-f]{16})?$", re.S)


class SyncError(Exception):
    """A failure with a message meant for the user (names the file or key)."""


class LocalFileError(SyncError):
    """A local file or directory that cannot be read or written."""


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like '16MiB', '16M', '8 KiB', '1G'
    (units are binary: K = 1024)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    m = re.match(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)$", text, re.I)
    if not m:
        raise SyncError("cannot read size %r: use bytes or a number with K, M, G (e.g. 16MiB)" % (value,))
    power = " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * (1024**power))


def normalise_prefix(prefix: Optional[str]) -> str:
    """'a/b' from '/a/b/', '' for the bucket root; refuses '..' and friends."""
    text = (prefix or "").strip("/")
    if not text:
        return ""
    clean = safe_relpath(text, "prefix")
    if clean != text:
        raise SyncError("prefix %r is not canonical (empty or '.' components); use %r" % (prefix, clean))
    return clean


def check_relpath(rel: str, what: str) -> str:
    """safe_relpath() plus: the name must be stored exactly as given and must
    not look like one of our temporaries. Returns rel unchanged."""
    clean = safe_relpath(rel, what)
    if clean != rel:
        raise UnsafePathError("%s %r has empty or '.' components and cannot be stored as given" % (what, rel))
    if any(TMP_RE.match(part) for part in rel.split("/")):
        raise UnsafePathError("%s %r uses the name pattern of this tool's temporary files" % (what, rel))
    return rel


def parent_dirs(rel: str) -> list[str]:
    """'a', 'a/b' for 'a/b/c'."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def tmp_name(name: str, run_id: str) -> str:
    candidate = ".%s.%s%s" % (name, TMP_MARK, run_id)
    if len(os.fsencode(candidate)) <= 255:
        return candidate
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return ".%s%s-%s" % (TMP_MARK, run_id, digest)


def parse_s3_time(text: Optional[str]) -> int:
    """Nanoseconds since the epoch from '2024-01-02T03:04:05.678Z' (0 if absent)."""
    m = _S3_TIME.match(text or "")
    if not m:
        return 0
    whole = calendar.timegm(tuple(int(g) for g in m.groups()[:6]) + (0, 0, 0))  # type: ignore[arg-type]
    frac = re.match(r"\.(\d+)", text[19:])
    ns = int((frac.group(1) + "000000000")[:9]) if frac else 0
    return whole * 1000000000 + ns


_S3_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)")


def mtime_header(ns: int) -> str:
    """rclone's x-amz-meta-mtime format: seconds with a fraction."""
    return "%d.%09d" % (ns // 1000000000, ns % 1000000000)


def parse_mtime_header(text: Optional[str]) -> int:
    if not text:
        return 0
    m = re.match(r"^(\d+)(?:\.(\d{1,9}))?$", text.strip())
    if not m:
        return 0
    return int(m.group(1)) * 1000000000 + int(((m.group(2) or "") + "000000000")[:9])


def is_sha(value: Any) -> bool:
    """A SHA-256 as this tool writes it: 64 lower-case hex digits."""
    return isinstance(value, str) and bool(re.match(r"^[0-9a-f]{64}$", value))


_buffers = threading.local()


def thread_buffer() -> bytearray:
    """This thread's BUFFER_SIZE buffer, reused for every read and write it does."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(BUFFER_SIZE)
    return buf
