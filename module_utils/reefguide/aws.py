# Shared AWS plumbing for the reefguide-efs modules: one way to build clients,
# one retry policy, one way to turn botocore errors into messages that say
# which resource failed and what to do.
#
# Runs on the controller (the project's virtual environment, recent boto3) and
# on the management instance (the distribution's python3-boto3, which can be
# old: Debian 12 ships 1.26, before boto3 read AWS_ENDPOINT_URL by itself), so
# the endpoint variables are resolved here rather than trusted to boto3.

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Optional

# boto3 is imported where it is used, not here: importing it costs ~0.1 s,
# which the S3 sync's no-op run does not need when the credentials are in the
# environment.
HAS_BOTO3 = importlib.util.find_spec("boto3") is not None and importlib.util.find_spec("botocore") is not None

# Merged into every AWS-facing module's argument_spec.
AWS_COMMON_ARGS: dict[str, dict[str, Any]] = dict(
    region=dict(type="str", aliases=["aws_region"]),
    profile=dict(type="str", aliases=["aws_profile"]),
    endpoint_url=dict(type="str", aliases=["aws_endpoint_url"]),
    max_attempts=dict(type="int", default=10),
)

# boto3 service name -> the suffix of AWS_ENDPOINT_URL_<SERVICE>.
_ENDPOINT_ENV_SUFFIX = {
    "cloudformation": "CLOUDFORMATION",
    "ec2": "EC2",
    "efs": "EFS",
    "s3": "S3",
    "ssm": "SSM",
    "sts": "STS",
}


def require_boto3(module: Any) -> None:
    """Fail with a message that says how to get boto3 where the module runs."""
    try:
        import boto3  # noqa: F401
        import botocore  # noqa: F401
    except ImportError as exc:
        module.fail_json(
            msg=(
                "boto3 is not importable by %s (%s). On the controller run "
                "'make setup'; on Amazon Linux 2023 'dnf install -y python3-boto3'."
            )
            % (sys.executable, exc)
        )


def resolve_endpoint(service: str, explicit: Optional[str] = None) -> Optional[str]:
    """The endpoint for a service: explicit argument, then AWS_ENDPOINT_URL_<SVC>,
    then AWS_ENDPOINT_URL; None means the real AWS endpoint."""
    if explicit:
        return explicit
    suffix = _ENDPOINT_ENV_SUFFIX.get(service, service.upper())
    return os.environ.get("AWS_ENDPOINT_URL_" + suffix) or os.environ.get("AWS_ENDPOINT_URL") or None


# One botocore data loader per process. A loader keeps every service model it has parsed, and
# parsing one costs 0.05-0.25 s of CPU (EC2's and S3's the most); a new session has a new loader,
# so each client of each module paid it again. A loader warmed in ansible-playbook itself
# (warm_loader, from callback_plugins/reefguide_preload.py) is inherited by every task's worker,
# where the controller-side modules run (action_plugins/reefguide_in_process.py): a client then
# costs about 0.015 s.
_LOADER: Any = None


def shared_loader() -> Any:
    global _LOADER
    if _LOADER is None:
        from botocore.loaders import create_loader

        _LOADER = create_loader()
    return _LOADER


def aws_session(region: Optional[str] = None, profile: Optional[str] = None) -> Any:
    import boto3
    import botocore.session

    core = botocore.session.Session()
    if not core.get_config_variable("data_path"):  # a custom AWS_DATA_PATH gets a loader of its own
        core.register_component("data_loader", shared_loader())
    kwargs: dict[str, Any] = {"botocore_session": core}
    if profile:
        kwargs["profile_name"] = profile
    if region:
        kwargs["region_name"] = region
    return boto3.session.Session(**kwargs)


def warm_loader(services: tuple[str, ...]) -> None:
    """Parse these services' models (and the endpoint data every client needs) into the shared loader."""
    session = aws_session(region="us-east-1")
    for service in services:
        session.client(service, endpoint_url="http://127.0.0.1:9", config=client_config())


def client_config(max_attempts: int = 10, max_pool_connections: int = 10, path_style: bool = False) -> Any:
    """botocore's 'standard' retry mode: exponential back-off with jitter on
    throttling, 5xx and connection errors, bounded by max_attempts."""
    kwargs: dict[str, Any] = dict(
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=60,
    )
    if path_style:
        kwargs["s3"] = {"addressing_style": "path"}
    from botocore.config import Config

    return Config(**kwargs)


def aws_client(
    service: str,
    region: Optional[str] = None,
    profile: Optional[str] = None,
    endpoint_url: Optional[str] = None,
    max_attempts: int = 10,
    max_pool_connections: int = 10,
    session: Any = None,
) -> Any:
    """A boto3 client honouring region, profile and endpoint overrides."""
    session = session or aws_session(region, profile)
    endpoint = resolve_endpoint(service, endpoint_url)
    config = client_config(max_attempts, max_pool_connections, path_style=bool(endpoint) and service == "s3")
    return session.client(service, endpoint_url=endpoint, config=config)


def client_from_params(module: Any, service: str, max_pool_connections: int = 10) -> Any:
    """aws_client() from a module's AWS_COMMON_ARGS parameters."""
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    p = module.params
    try:
        return aws_client(
            service,
            region=p.get("region"),
            profile=p.get("profile"),
            endpoint_url=p.get("endpoint_url"),
            max_attempts=p.get("max_attempts") or 10,
            max_pool_connections=max_pool_connections,
        )
    except ProfileNotFound as exc:
        module.fail_json(msg="AWS profile not found: %s. List profiles with 'aws configure list-profiles'." % exc)
    except BotoCoreError as exc:
        module.fail_json(msg="Cannot create the %s client: %s" % (service, exc))


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, or of an error shaped like
    one (the S3 sync's own), '' when there is none."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


_DENIED = "the credentials in use lack this permission; iam/README.md lists the policies the playbooks need"
_EXPIRED = "the session token has expired: log in again (e.g. 'aws sso login --profile <profile>')"
_HINTS = {
    "AccessDenied": _DENIED,
    "AccessDeniedException": _DENIED,
    "UnauthorizedOperation": _DENIED,
    "403": _DENIED,
    "ExpiredToken": _EXPIRED,
    "ExpiredTokenException": _EXPIRED,
    "InvalidClientTokenId": "the access key is not valid in this account/region: check the profile",
    "UnrecognizedClientException": "the access key is not valid in this account/region: check the profile",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check the profile",
    "NoSuchBucket": "the bucket does not exist: check the stack name and region",
    "SlowDown": "S3 kept throttling past the retry budget: lower the concurrency or retry later",
    "RequestLimitExceeded": "EC2 kept throttling past the retry budget: retry later",
    "ThrottlingException": "the API kept throttling past the retry budget: retry later",
}


# The IAM action an S3 operation is authorized by, for AccessDenied messages
# that do not name it (S3's often do not).
_S3_IAM_ACTION = {
    "PutObject": "s3:PutObject", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "ListObjectsV2": "s3:ListBucket",
    "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket", "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
}


def describe_error(exc: BaseException, what: str) -> str:
    """'<what> failed: <Code>: <message> (<what to do>)'."""
    botocore_exceptions = sys.modules.get("botocore.exceptions")  # not loaded: not a botocore error
    if botocore_exceptions is not None and isinstance(exc, botocore_exceptions.NoCredentialsError):
        return (
            "%s failed: no AWS credentials found. Set a profile (-e aws_profile=NAME or AWS_PROFILE) "
            "or run 'aws configure' / 'aws sso login'." % what
        )
    code = error_code(exc)
    if code:
        msg = exc.response.get("Error", {}).get("Message", "") or str(exc)
        text = "%s failed: %s: %s" % (what, code, msg)
        action = _S3_IAM_ACTION.get(getattr(exc, "operation_name", "") or "")
        if _HINTS.get(code) == _DENIED and action and "not authorized to perform" not in msg:
            text += " (%s needs %s)" % (exc.operation_name, action)
        hint = _HINTS.get(code)
        return text + (" (%s)" % hint if hint else "")
    return "%s failed: %s" % (what, exc)


def fail_aws(module: Any, exc: BaseException, what: str, **extra: Any) -> None:
    module.fail_json(msg=describe_error(exc, what), error_code=error_code(exc), **extra)


def read_json_object(s3: Any, bucket: str, key: str) -> Optional[Any]:
    """The JSON document stored at s3://bucket/key, None when there is no such
    object, ValueError when it is not JSON; other errors raise as they are."""
    import json

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    return json.loads(body)
