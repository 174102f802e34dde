"""The S3 engine reaches the endpoint boto3 reaches (issue 12): FIPS and dual-stack endpoints from
the environment (AWS_USE_FIPS_ENDPOINT, AWS_USE_DUALSTACK_ENDPOINT) or from the AWS config file
(use_fips_endpoint, use_dualstack_endpoint, its s3 section), and the CA bundle from AWS_CA_BUNDLE or
ca_bundle. The host the engine picks for a bucket is held against the one botocore itself writes
into a presigned URL, for each combination; a configuration that names none of these settings is
read without botocore (the instance's fast path)."""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from ansible.module_utils.reefguide import aws
from ansible.module_utils.reefguide.s3_client import S3Client
from ansible.module_utils.reefguide.s3_settings import S3Settings, s3_settings
from ansible.module_utils.reefguide.sync_common import SyncError
from botocore.config import Config
from botocore.credentials import Credentials

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_CA_BUNDLE", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


class Sent(Exception):
    """Raised by a before-send handler: the request botocore would send, caught before the network."""


def botocore_host(bucket: str, region: str, fips: bool, dualstack: bool) -> str:
    """The host botocore itself sends a ListObjectsV2 of bucket to."""
    client = boto3.client("s3", region_name=region, aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x",
                          config=Config(use_fips_endpoint=fips, use_dualstack_endpoint=dualstack,
                                        # the engine takes us-east-1's regional endpoint, as botocore can
                                        s3={"us_east_1_regional_endpoint": "regional"}))

    def capture(request: object, **kwargs: object) -> None:
        raise Sent(urlsplit(request.url).netloc)  # type: ignore[attr-defined]
    client.meta.events.register("before-send.s3", capture)
    with pytest.raises(Sent) as sent:
        client.list_objects_v2(Bucket=bucket)
    return str(sent.value)


@pytest.mark.parametrize("bucket", ["reefguide-transfer", "my.dotted.bucket"])
def test_the_engine_picks_botocores_host_for_fips_and_dual_stack(bucket: str) -> None:
    for region, fips, dualstack in itertools.product(["us-east-1", "ap-southeast-2", "us-gov-west-1"],
                                                      [False, True], [False, True]):
        ours = S3Client(bucket, CREDS, region, settings=S3Settings(fips=fips, dualstack=dualstack)).host_header
        assert ours == botocore_host(bucket, region, fips, dualstack), (region, fips, dualstack)
    assert (S3Client(bucket, CREDS, "cn-north-1", settings=S3Settings(dualstack=True)).host_header
            == botocore_host(bucket, "cn-north-1", False, True))
    with pytest.raises(SyncError, match="no FIPS endpoint in cn-north-1"):
        S3Client(bucket, CREDS, "cn-north-1", settings=S3Settings(fips=True))


def test_the_settings_come_from_the_environment_or_the_config_file(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    def no_botocore(*args: object, **kwargs: object) -> None:
        raise AssertionError("botocore was asked, though the configuration names none of the settings")
    monkeypatch.setattr(aws, "aws_session", no_botocore)
    assert s3_settings() == S3Settings()
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/corp-ca.pem")
    assert s3_settings() == S3Settings(fips=True, ca_bundle="/etc/corp-ca.pem")
    monkeypatch.undo()

    config = tmp_path / "config"
    config.write_text("[default]\nregion = us-east-1\nuse_fips_endpoint = true\nca_bundle = /etc/corp-ca.pem\n\n"
                      "[profile corp]\nregion = us-west-2\ns3 =\n  use_dualstack_endpoint = true\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for name in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    assert s3_settings() == S3Settings(fips=True, ca_bundle="/etc/corp-ca.pem")
    assert s3_settings(profile="corp") == S3Settings(dualstack=True)
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "false")  # the environment wins over the file, as in botocore
    assert s3_settings() == S3Settings(fips=False, ca_bundle="/etc/corp-ca.pem")
    monkeypatch.delenv("AWS_USE_FIPS_ENDPOINT")
    # an endpoint_url of the config file (a profile's own, or its services section's s3), as boto3 takes it
    config.write_text("[default]\nservices = corp-s3\n\n[services corp-s3]\ns3 =\n  endpoint_url = http://127.0.0.1:9000\n\n"
                      "[profile other]\nendpoint_url = https://global.example.internal\n")
    assert s3_settings().endpoint_url == "http://127.0.0.1:9000"
    assert s3_settings(profile="other").endpoint_url == "https://global.example.internal"
    assert boto3.session.Session(profile_name="other", region_name="us-east-1").client(
        "s3").meta.endpoint_url == "https://global.example.internal"  # what boto3 itself reaches
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert s3_settings().endpoint_url is None
