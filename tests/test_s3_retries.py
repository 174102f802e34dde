"""How the S3 engine retries what S3 refuses for a while (issue 12), against S3 stand-ins on loopback.

A clock off by more than 15 minutes (a laptop after sleep, a VM whose clock drifted): S3 answers
RequestTimeTooSkewed to every request signed with it. The engine learns S3's time from that answer
(its ServerTime, or the Date header) and signs the retry with it, as botocore corrects its clock,
instead of retrying ten times with the same wrong time. And a throttled request (503 SlowDown)
waits longer than after a network error, and at least what S3's answer asks."""

from __future__ import annotations

import calendar
import email.utils
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ansible.module_utils.reefguide.s3_client import S3Client
from botocore.credentials import Credentials

AHEAD = 3600.0  # the stand-in's clock, against this machine's
EMPTY_LISTING = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name>'
                 b"<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>")


class SkewedS3(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        now = time.time() + AHEAD
        signed = calendar.timegm(time.strptime(self.headers["x-amz-date"], "%Y%m%dT%H%M%SZ"))
        self.server.dates.append(signed - now)  # type: ignore[attr-defined]
        if abs(signed - now) > 900:
            body = ("<Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and "
                    "the current time is too large.</Message><ServerTime>%s</ServerTime></Error>"
                    % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))).encode()
            if self.server.date_only:  # type: ignore[attr-defined]  # S3's time in the Date header alone
                body = body.split(b"<ServerTime>")[0] + b"</Error>"
            self.send_response(403)
            self.send_header("Date", email.utils.formatdate(now, usegmt=True))
        else:
            body = EMPTY_LISTING
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=["ServerTime", "Date header"])
def skewed(request: pytest.FixtureRequest) -> Iterator[http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SkewedS3)
    server.dates, server.date_only = [], request.param == "Date header"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_a_clock_an_hour_off_is_corrected_from_s3s_answer_and_the_retry_succeeds(
        skewed: http.server.HTTPServer) -> None:
    client = S3Client("b", Credentials("AKIDEXAMPLE", "secret"), "ap-southeast-2",
                      "http://127.0.0.1:%d" % skewed.server_address[1])
    assert list(client.list_objects("data/")) == []
    offsets = skewed.dates  # type: ignore[attr-defined]
    assert len(offsets) == 2 and offsets[0] < -3000 and abs(offsets[1]) < 60, offsets  # one refusal, then in time
    assert abs(client.clock_offset - AHEAD) < 60
    assert list(client.list_objects("data/")) == [] and len(offsets) == 3  # later requests are signed in time


class ThrottlingS3(http.server.BaseHTTPRequestHandler):
    """503 SlowDown with a retry hint for the first two requests, then the listing."""

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen += 1  # type: ignore[attr-defined]
        if self.server.seen <= 2:  # type: ignore[attr-defined]
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            name, value = self.server.hint  # type: ignore[attr-defined]
            self.send_header(name, value)
        else:
            body = EMPTY_LISTING
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("hint, at_least", [(("x-amz-retry-after", "1500"), 1.5), (("Retry-After", "3"), 3.0)])
def test_a_throttled_request_waits_at_least_what_s3_asks(hint: tuple[str, str], at_least: float) -> None:
    """SlowDown/503 back off from a longer base than a network error, and never less than the answer's
    own hint (x-amz-retry-after in milliseconds, Retry-After in seconds): the waits are recorded, not
    slept."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ThrottlingS3)
    server.seen, server.hint = 0, hint  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = S3Client("b", Credentials("AKIDEXAMPLE", "secret"), "ap-southeast-2",
                          "http://127.0.0.1:%d" % server.server_address[1])
        waits: list[float] = []
        client._cancel_event.wait = lambda seconds: waits.append(seconds)  # type: ignore[method-assign]
        assert list(client.list_objects("data/")) == []
    finally:
        server.shutdown()
    assert server.seen == 3 and len(waits) == 2  # type: ignore[attr-defined]
    assert all(at_least <= w <= 60 for w in waits), waits
