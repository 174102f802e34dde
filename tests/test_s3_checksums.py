"""Every object and every part of a multipart upload goes to S3 with its SHA-256 as a checksum S3
checks and keeps (issue 12), against an S3 stand-in on loopback that checks them as S3 does.

Before, parts went as UNSIGNED-PAYLOAD with no checksum: S3 checked nothing for a file over the part
size, and a bucket with Object Lock, which requires a checksum on every write, refused the upload.
moto keeps the checksums it is given but checks none, hence the stand-in: it answers BadDigest to a
body whose x-amz-checksum-sha256 (or signed x-amz-content-sha256) differs from it, and refuses a
CompleteMultipartUpload whose parts' checksums are not those it received."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ansible.module_utils.reefguide.sync import Sync, SyncOptions
from s3_stand_ins import EMPTY_LISTING, Quiet, serving, url

PART = 5 * 1024 * 1024  # S3's smallest part


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class CheckingS3(Quiet):
    """Just enough S3 for a push, checking each body against the checksums sent with it."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        if "list-type" in self.path or "prefix=" in self.path:
            self.reply(200, EMPTY_LISTING)
        else:
            self.reply(404, b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>")

    def do_HEAD(self) -> None:  # noqa: N802
        self.reply(404, b"")

    def refuse(self, message: str) -> None:
        self.server.refused.append(message)  # type: ignore[attr-defined]
        self.reply(400, ("<Error><Code>BadDigest</Code><Message>%s</Message></Error>" % message).encode())

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def checked(self, data: bytes) -> bool:
        sent = self.headers.get("x-amz-checksum-sha256")
        signed = self.headers.get("x-amz-content-sha256")
        if sent is None:
            self.refuse("no x-amz-checksum-sha256")
            return False
        if sent != b64_sha256(data) or (signed != "UNSIGNED-PAYLOAD" and signed != hashlib.sha256(data).hexdigest()):
            self.refuse("the body does not match its checksum")
            return False
        return True

    def do_PUT(self) -> None:  # noqa: N802
        data, query = self.body(), parse_qs(urlsplit(self.path).query)
        if not self.checked(data):
            return
        with self.server.lock:  # type: ignore[attr-defined]
            if "partNumber" in query:
                self.server.parts[int(query["partNumber"][0])] = b64_sha256(data)  # type: ignore[attr-defined]
            else:
                self.server.objects[urlsplit(self.path).path] = data  # type: ignore[attr-defined]
        self.reply(200, b"", ("ETag", '"%s"' % hashlib.md5(data).hexdigest()))

    def do_POST(self) -> None:  # noqa: N802
        data, query = self.body(), parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        if "uploads" in query:
            self.server.algorithm = self.headers.get("x-amz-checksum-algorithm")  # type: ignore[attr-defined]
            self.reply(200, b"<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>")
            return
        listed = {int(n): c for c, n in re.findall(
            rb"<ChecksumSHA256>([^<]*)</ChecksumSHA256>.*?<PartNumber>(\d+)</PartNumber>", data)}
        if {n: c.decode() for n, c in listed.items()} != self.server.parts:  # type: ignore[attr-defined]
            self.refuse("the parts' checksums are not those uploaded")
            return
        self.server.completed += 1  # type: ignore[attr-defined]
        self.reply(200, b"<CompleteMultipartUploadResult><ETag>\"m-3\"</ETag></CompleteMultipartUploadResult>")


def push(server: Any, src: Path, part_size: int = PART) -> dict:
    opts = SyncOptions(direction="push", bucket="b", prefix="data", path=str(src), endpoint_url=url(server),
                       part_size=part_size, concurrency=3)
    return Sync(opts).run()


def test_each_part_and_object_carries_its_sha256_which_s3_checks(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    src = tmp_path / "src"
    src.mkdir()
    big = bytes(range(256)) * (2 * PART // 256) + uuid.uuid4().bytes * 1000  # three parts
    (src / "big.bin").write_bytes(big)
    (src / "small.txt").write_bytes(b"small\n")
    state = dict(refused=[], parts={}, objects={}, completed=0, algorithm=None, lock=threading.Lock())
    with serving(CheckingS3, **state) as server:
        result = push(server, src)
    assert server.refused == [], server.refused  # type: ignore[attr-defined]
    assert server.algorithm == "SHA256" and server.completed == 1  # type: ignore[attr-defined]
    parts = [big[i:i + PART] for i in range(0, len(big), PART)]
    assert server.parts == {n + 1: b64_sha256(p) for n, p in enumerate(parts)}  # type: ignore[attr-defined]
    assert server.objects["/b/data/small.txt"] == b"small\n"  # type: ignore[attr-defined]
    assert result["transferred"]["files"] == 2
