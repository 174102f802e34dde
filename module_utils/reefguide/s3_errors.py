# The S3 errors the wire client raises, which of them are worth another try,
# and the retry budget: kept apart so that code catching them (the transfers,
# the modules) need not import the client itself.

from __future__ import annotations

import random
import threading
from typing import Optional

RETRY_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestTimeTooSkewed",
    "ChecksumMismatch",
}


# S3 asking the client to slow down: backed off from a base ten times longer than a network error's
THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}


def back_off(exc: BaseException, attempt: int) -> float:
    """Seconds before the next attempt: jittered, doubling from 0.1 s (1 s when S3 throttles: a 503
    SlowDown or a 429), at most 20 s; never less than what the answer asks (x-amz-retry-after, in
    milliseconds, or Retry-After, in seconds)."""
    throttled = isinstance(exc, S3Error) and (exc.code in THROTTLING_CODES or exc.status in (429, 503))
    delay = random.uniform(0, min(20.0, (1.0 if throttled else 0.1) * (2 ** attempt)))
    headers = getattr(exc, "headers", None) or {}
    try:
        if headers.get("x-amz-retry-after"):
            delay = max(delay, min(60.0, int(headers["x-amz-retry-after"]) / 1000.0))
        elif headers.get("retry-after"):
            delay = max(delay, min(60.0, float(headers["retry-after"])))
    except ValueError:
        pass  # an unreadable hint: the back-off as it is
    return delay


class TransientError(Exception):
    """A network-level failure worth retrying (connection reset, timeout...)."""


class S3Error(Exception):
    """An S3 error response, shaped like botocore's ClientError (response,
    operation_name) so that describe_error() and error_code() treat it like
    any other AWS error, without importing botocore."""

    def __init__(self, code: str, message: str, status: int, operation: str, headers: Optional[dict] = None):
        super().__init__("An error occurred (%s) when calling the %s operation: %s" % (code, operation, message))
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.operation_name = operation
        self.response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}


class RetryBudget:
    """botocore's 'standard' retry quota: retries draw from a shared bucket
    that successes refill, so a failing endpoint is not hammered forever."""

    def __init__(self, capacity: int = 500, cost: int = 5):
        self.capacity = capacity
        self.tokens = capacity
        self.cost = cost
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.tokens < self.cost:
                return False
            self.tokens -= self.cost
            return True

    def refund(self) -> None:
        if self.tokens < self.capacity:
            with self.lock:
                self.tokens = min(self.capacity, self.tokens + 1)
