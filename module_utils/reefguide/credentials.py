# Credentials for the S3 wire client found without importing botocore: the
# keys in the environment (what botocore's chain picks first). When there are
# none, the sync asks botocore's session (profiles, SSO, the instance role).

from __future__ import annotations

import os
from typing import Any, Optional


class StaticCredentials:
    """Keys from the environment, with the one method the signer uses."""

    def __init__(self, access_key: str, secret_key: str, token: Optional[str]):
        self.access_key, self.secret_key, self.token = access_key, secret_key, token

    def get_frozen_credentials(self) -> StaticCredentials:
        return self


def environment_credentials(profile: Optional[str], region: Optional[str]) -> tuple[Optional[Any], Optional[str]]:
    """(credentials, region) from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN and
    AWS_REGION/AWS_DEFAULT_REGION when no profile is asked for: what botocore's
    chain would pick first, found without importing botocore. (None, region) otherwise."""
    env = os.environ
    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if profile or not env.get("AWS_ACCESS_KEY_ID") or not env.get("AWS_SECRET_ACCESS_KEY") or not region:
        return None, region
    return StaticCredentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                             env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None), region
