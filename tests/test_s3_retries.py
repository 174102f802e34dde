"""How the S3 engine retries what S3 refuses for a while (issue 12), against S3 stand-ins on loopback.

A clock off by more than 15 minutes (a laptop after sleep, a VM whose clock drifted): S3 answers
RequestTimeTooSkewed to every request signed with it. The engine learns S3's time from that answer
(its ServerTime, or the Date header) and signs the retry with it, as botocore corrects its clock,
instead of retrying ten times with the same wrong time. And a throttled request (503 SlowDown)
waits longer than after a network error, and at least what S3's answer asks."""

from __future__ import annotations

import calendar
import email.utils
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ansible.module_utils.reefguide.s3_client import S3Client
from botocore.credentials import Credentials
from s3_stand_ins import EMPTY_LISTING, Quiet, serving, url

AHEAD = 3600.0  # the stand-in's clock, against this machine's


class SkewedS3(Quiet):
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
            self.reply(403, body, ("Date", email.utils.formatdate(now, usegmt=True)))
        else:
            self.reply(200, EMPTY_LISTING)


@pytest.fixture(params=["ServerTime", "Date header"])
def skewed(request: pytest.FixtureRequest) -> Iterator[Any]:
    with serving(SkewedS3, dates=[], date_only=request.param == "Date header") as server:
        yield server


def test_a_clock_an_hour_off_is_corrected_from_s3s_answer_and_the_retry_succeeds(
        skewed: Any) -> None:
    client = S3Client("b", Credentials("AKIDEXAMPLE", "secret"), "ap-southeast-2", url(skewed))
    assert list(client.list_objects("data/")) == []
    offsets = skewed.dates  # type: ignore[attr-defined]
    assert len(offsets) == 2 and offsets[0] < -3000 and abs(offsets[1]) < 60, offsets  # one refusal, then in time
    assert abs(client.clock_offset - AHEAD) < 60
    assert list(client.list_objects("data/")) == [] and len(offsets) == 3  # later requests are signed in time


class ThrottlingS3(Quiet):
    """503 SlowDown with a retry hint for the first two requests, then the listing."""

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen += 1  # type: ignore[attr-defined]
        if self.server.seen <= 2:  # type: ignore[attr-defined]
            self.reply(503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
                       self.server.hint)  # type: ignore[attr-defined]
        else:
            self.reply(200, EMPTY_LISTING)


@pytest.mark.parametrize("hint, at_least", [(("x-amz-retry-after", "1500"), 1.5), (("Retry-After", "3"), 3.0)])
def test_a_throttled_request_waits_at_least_what_s3_asks(hint: tuple[str, str], at_least: float) -> None:
    """SlowDown/503 back off from a longer base than a network error, and never less than the answer's
    own hint (x-amz-retry-after in milliseconds, Retry-After in seconds): the waits are recorded, not
    slept."""
    with serving(ThrottlingS3, seen=0, hint=hint) as server:
        client = S3Client("b", Credentials("AKIDEXAMPLE", "secret"), "ap-southeast-2", url(server))
        waits: list[float] = []
        client._cancel_event.wait = lambda seconds: waits.append(seconds)  # type: ignore[method-assign]
        assert list(client.list_objects("data/")) == []
    assert server.seen == 3 and len(waits) == 2  # type: ignore[attr-defined]
    assert all(at_least <= w <= 60 for w in waits), waits
