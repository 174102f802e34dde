"""A large body goes after S3's "100 Continue" (issue 12), against S3 stand-ins on loopback.

S3 refuses a request it will not take (an expired token, access denied, another region) as soon
as it has the headers, without reading the body. A sender that sends a large body anyway fills the
socket, sees the connection closed under it, and reports a broken pipe, ten times. With
`Expect: 100-continue` the engine waits for S3's go-ahead, so a refusal arrives before any byte of
the body, once, with S3's own code; a server that says nothing gets the body after a second, as
botocore sends it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.reefguide import s3_connect
from ansible.module_utils.reefguide.s3_client import FileBody, S3Client
from ansible.module_utils.reefguide.s3_errors import S3Error
from botocore.credentials import Credentials
from s3_stand_ins import Quiet, serving, url

BIG = 32 * 1024 * 1024  # beyond what loopback's socket buffers take without a reader


class StandIn(Quiet):
    """Counts requests, the Expect headers they carried and the body bytes it read."""

    protocol_version = "HTTP/1.1"

    def seen(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        self.server.expects.append(self.headers.get("Expect"))  # type: ignore[attr-defined]

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        if not self.headers.get("Expect"):
            self.seen()
        length, got = int(self.headers["Content-Length"]), 0
        while got < length:
            chunk = self.rfile.read(min(65536, length - got))
            if not chunk:
                break
            got += len(chunk)
        self.server.body_bytes += got  # type: ignore[attr-defined]
        self.reply(200, b"", ("ETag", '"e"'))


class RefusingS3(StandIn):
    """AccessDenied on the headers, as S3 answers it, with or without Expect: the body is never read."""

    def refuse(self) -> None:
        self.seen()
        self.close_connection = True
        self.reply(403, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
                   ("Connection", "close"))

    def handle_expect_100(self) -> bool:
        self.refuse()
        return False

    def do_PUT(self) -> None:  # noqa: N802
        self.refuse()


class ContinuingS3(StandIn):
    def handle_expect_100(self) -> bool:
        self.seen()
        return super().handle_expect_100()  # "100 Continue", then do_PUT reads the body


class SilentS3(StandIn):
    """Never says 100 Continue: reads the body whenever it comes."""

    def handle_expect_100(self) -> bool:
        self.seen()
        return True


def put(server: Any, path: Path) -> Any:
    client = S3Client("b", Credentials("AKIDEXAMPLE", "secret"), "ap-southeast-2", url(server))
    return client.call("PutObject", "PUT", "data/x.bin", body=FileBody(str(path), 0, path.stat().st_size))


@pytest.fixture()
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\xab" * BIG)
    return path


def test_a_refusal_of_a_large_body_is_s3s_own_said_once_before_any_byte_went(big: Path) -> None:
    with serving(RefusingS3, requests=0, expects=[], body_bytes=0) as server:
        with pytest.raises(S3Error) as err:
            put(server, big)
    assert err.value.code == "AccessDenied" and "Broken pipe" not in str(err.value)
    assert server.requests == 1 and server.expects == ["100-continue"]  # type: ignore[attr-defined]
    assert server.body_bytes == 0  # type: ignore[attr-defined]


def test_a_large_body_goes_after_100_continue_and_a_small_one_without_waiting(big: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 10)
    with serving(ContinuingS3, requests=0, expects=[], body_bytes=0) as server:
        assert put(server, big).status == 200
        assert put(server, small).status == 200
    assert server.expects == ["100-continue", None]  # type: ignore[attr-defined]
    assert server.body_bytes == BIG + 10  # type: ignore[attr-defined]


def test_a_server_that_never_says_continue_gets_the_body_after_the_wait(
        big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_connect.await_continue, "__defaults__", (0.3,))
    with serving(SilentS3, requests=0, expects=[], body_bytes=0) as server:
        assert put(server, big).status == 200
    assert server.body_bytes == BIG and server.requests == 1  # type: ignore[attr-defined]
