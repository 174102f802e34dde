# What the S3 engine takes from the AWS configuration besides credentials and region, as boto3 and
# the aws CLI do, so that the transfers reach the endpoint the control-plane calls reach: FIPS and
# dual-stack endpoints, an endpoint_url of the config file (a profile's, or its services section's
# s3), and the CA bundle. The environment is read directly; the config file
# (AWS_CONFIG_FILE, or ~/.aws/config) through botocore, and only when it names one of these settings,
# so a plain configuration keeps the engine's fast path (no botocore import on the instance).

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

SETTINGS = ("use_fips_endpoint", "use_dualstack_endpoint", "ca_bundle", "endpoint_url", "services")


@dataclass
class S3Settings:
    fips: bool = False
    dualstack: bool = False
    ca_bundle: Optional[str] = None
    endpoint_url: Optional[str] = None  # the config file's, for S3 (the environment's: aws.resolve_endpoint)


def _true(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def _config_file_names_one(path: str) -> bool:
    try:
        with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return False
    return any(name in text for name in SETTINGS)


def environment_settings() -> S3Settings:
    """The settings from the environment alone (no config file, no botocore)."""
    env = os.environ
    return S3Settings(fips=_true(env.get("AWS_USE_FIPS_ENDPOINT")),
                      dualstack=_true(env.get("AWS_USE_DUALSTACK_ENDPOINT")),
                      ca_bundle=env.get("AWS_CA_BUNDLE") or None)


def s3_settings(botocore_session: Any = None, profile: Optional[str] = None) -> S3Settings:
    """The settings for a run: from botocore_session when given (the run has one already), else from
    the environment, or from a botocore session of profile when the config file names a setting."""
    env = os.environ
    if botocore_session is None and _config_file_names_one(env.get("AWS_CONFIG_FILE") or "~/.aws/config"):
        from ansible.module_utils.reefguide.aws import aws_session

        botocore_session = aws_session(None, profile)._session
    if botocore_session is None:
        return environment_settings()
    scoped_s3 = (botocore_session.get_scoped_config() or {}).get("s3") or {}
    return S3Settings(
        fips=_true(botocore_session.get_config_variable("use_fips_endpoint")),
        dualstack=_true(botocore_session.get_config_variable("use_dualstack_endpoint"))
        or _true(scoped_s3.get("use_dualstack_endpoint")),
        ca_bundle=botocore_session.get_config_variable("ca_bundle") or None,
        endpoint_url=configured_endpoint(botocore_session))


def configured_endpoint(botocore_session: Any) -> Optional[str]:
    """S3's endpoint_url from the config file (or AWS_ENDPOINT_URL[_S3]), as botocore resolves it;
    None when there is none, when ignore_configured_endpoint_urls is set, or with a botocore older
    than 1.31 (which has no configured endpoints: the instance's python3-boto3 may be)."""
    if _true(botocore_session.get_config_variable("ignore_configured_endpoint_urls")):
        return None
    try:
        from botocore.configprovider import ConfiguredEndpointProvider
    except ImportError:
        return None
    return ConfiguredEndpointProvider(full_config=botocore_session.full_config,
                                      scoped_config=botocore_session.get_scoped_config(),
                                      client_name="s3", environ=os.environ).provide() or None
