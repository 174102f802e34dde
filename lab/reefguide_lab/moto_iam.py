"""IAM checks on presigned S3 URLs, for the lab's moto server under `labctl up --iam` (moto_lab.py).

moto 5 enforces IAM on header-signed requests only: a presigned URL (what the
amazon.aws.aws_ssm plugin hands to curl on the instance to move module files
through the transfer bucket) has no Authorization header, and moto's check
fails with an internal error. This wrapper checks such a request as AWS does,
against the policies of the user whose access key signed the URL (the
URL's signature is not verified: the lab proves policies, not cryptography).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import parse_qs, urlparse

from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.access_control import IAMRequestBase

_original = ActionAuthenticatorMixin._authenticate_and_authorize_action
_original_check = IAMRequestBase.check_action_permitted


def _check_and_log(self: Any, resource: str) -> None:
    """moto's check, with one line per decision in moto.log ('iam: user action resource verdict')."""
    who = getattr(self._access_key, "arn", "?").rsplit("/", 1)[-1]
    try:
        _original_check(self, resource)
    except Exception:
        sys.stderr.write("iam: %s %s %s denied\n" % (who, self._action, resource))
        raise
    sys.stderr.write("iam: %s %s %s allowed\n" % (who, self._action, resource))


def _authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
    enforcing = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
    if enforcing and "Authorization" not in self.headers:
        query = parse_qs(urlparse(self.uri).query)
        credential = (query.get("X-Amz-Credential") or [""])[0]
        if credential:
            headers = dict(self.headers.items())
            headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=%s, SignedHeaders=%s, Signature=%s" % (
                credential, (query.get("X-Amz-SignedHeaders") or ["host"])[0],
                (query.get("X-Amz-Signature") or [""])[0])
            request = iam_request_cls(account_id=self.current_account, method=self.method, path=self.raw_path,
                                      data=self.data, body=self.raw_body, headers=headers,
                                      action=self._get_action())
            request.check_action_permitted(resource)
            return
    _original(self, iam_request_cls, resource)


def install() -> None:
    ActionAuthenticatorMixin._authenticate_and_authorize_action = _authorize
    IAMRequestBase.check_action_permitted = _check_and_log
