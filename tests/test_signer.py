"""The S3 engine's own SigV4 signer (module_utils/reefguide/s3_client.py) against botocore's, on a
few hundred requests drawn from what a sync sends and what users name their files: keys with
spaces, unicode, `+ ~ % * ( ) ' ! @ & = ; : , ? [ ] #` and newlines; plain, dotted and dashed
buckets on AWS's own endpoints (virtual-hosted and path-style) and on a custom one; every region
form; list, multipart and delete queries with odd values; unsigned and signed payloads; with and
without a session token. Every x-amz-date, x-amz-content-sha256 and Authorization must be
identical: the signer stays equivalent to AWS's reference as it changes (moto checks no signature)."""

from __future__ import annotations

import datetime
import hashlib
import random
from urllib.parse import urlsplit

import botocore.auth
import pytest
from ansible.module_utils.reefguide.s3_client import UNSIGNED, S3Client, canonical_query
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode

REQUESTS = 300
NOW = 1700000000.0  # 2023-11-14T22:13:20Z
BUCKETS = ["reefguide-transfer", "my.dotted.bucket", "a-b-c-0123456789", "x" * 63, "UPPER_case"]
REGIONS = ["ap-southeast-2", "us-east-1", "eu-central-1", "cn-north-1", "us-gov-west-1"]
ENDPOINTS = [None, None, "http://127.0.0.1:9000", "https://s3.example.internal", "http://[::1]:4566"]
KEY_CHARS = list("abcXYZ019-_./") + list(" +~%*()'!@&=;:,?[]#$") + ["\n", "\t", "ü", "ñ", "日本", "😀", "\u00a0"]
QUERIES = [
    {}, {"uploads": ""}, {"delete": ""}, {"list-type": "2"},
    {"list-type": "2", "prefix": "reefguide-efs/runs/data%2Freefguide/", "continuation-token": "1/a+b=c"},
    {"partNumber": "7", "uploadId": "VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA--"},
    {"uploadId": "a/b c+d=e~f"}, {"prefix": "ü ñ/日本/", "delimiter": "/", "max-keys": "1000"},
]
METHODS = ["PUT", "GET", "HEAD", "DELETE", "POST"]


def botocore_headers(creds: Credentials, region: str, url: str, method: str, headers: dict[str, str],
                     body: bytes, sign_payload: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda: datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).replace(tzinfo=None))
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": sign_payload})
    botocore.auth.S3SigV4Auth(creds, "s3", region).add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


def test_the_engine_signs_a_few_hundred_requests_exactly_as_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20261207)
    differ = []
    for n in range(REQUESTS):
        token = rng.choice([None, "FwoGZXIvYXdzEJr//////////wEaDH+token/with=odd+chars"])
        creds = Credentials("AKIDEXAMPLE%d" % n, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
        bucket, region, endpoint = rng.choice(BUCKETS), rng.choice(REGIONS), rng.choice(ENDPOINTS)
        if endpoint is None and bucket != bucket.lower():
            bucket = bucket.lower()  # AWS's own endpoints take lower-case bucket names only
        client = S3Client(bucket, creds, region, endpoint)
        key = None if rng.random() < 0.1 else "".join(rng.choice(KEY_CHARS) for _ in range(rng.randint(1, 40)))
        method, query = rng.choice(METHODS), rng.choice(QUERIES)
        body = rng.randbytes(rng.randint(0, 64)) if method in ("PUT", "POST") else b""
        sign_payload = rng.random() < 0.5
        payload_hash = hashlib.sha256(body).hexdigest() if sign_payload else UNSIGNED
        headers = {"content-length": str(len(body))} if method in ("PUT", "POST") else {}
        if rng.random() < 0.5:
            headers["x-amz-meta-sha256"] = hashlib.sha256(body).hexdigest()
        if rng.random() < 0.3:
            headers["content-type"] = "application/octet-stream"
        path, qs = client.path_for(key), canonical_query(query)
        ours = dict(headers)
        client.sign(method, path, qs, ours, payload_hash, now=NOW)

        # the URL as botocore's serializer writes it: its own encoding of the key (a greedy label) and of
        # the query, in the order given (its signer sorts); the host the engine chose (the endpoint's)
        scheme = "https" if endpoint is None else urlsplit(endpoint).scheme
        their_path = client.base_path + ("/" + percent_encode(key, safe="/~") if key is not None else "") or "/"
        their_qs = "&".join("%s=%s" % (percent_encode(k), percent_encode(v)) for k, v in query.items())
        url = "%s://%s%s%s" % (scheme, ours["host"], their_path, "?" + their_qs if their_qs else "")
        theirs = botocore_headers(creds, region, url, method, headers, body, sign_payload, monkeypatch)
        for name in ("x-amz-date", "x-amz-content-sha256", "authorization"):
            if ours.get(name) != theirs.get(name):
                differ.append((n, method, bucket, region, endpoint, key, query, name, ours.get(name), theirs.get(name)))
    assert differ == [], "%d of %d requests signed differently; first: %r" % (len(differ), REQUESTS, differ[:3])
