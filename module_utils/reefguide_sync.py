# -*- coding: utf-8 -*-
# The S3 sync engine behind the s3_sync module: a local directory (or file)
# <-> s3://bucket/prefix, both directions, incremental by size + SHA-256.
#
# Why it looks the way it does:
# - Speed on many small files is decided by client CPU per request (DESIGN.md
#   section 3). botocore spends 1-2 ms of CPU per call (events, endpoint rules,
#   parsing), the GIL serialises that, and 5,000 small PUTs take ~11 s on two
#   cores where s5cmd needs ~5.6 s. The data path (PUT, GET, UploadPart,
#   listing, deletes) therefore speaks S3 directly over http.client with its
#   own SigV4 signer (~0.3 ms per request) and keeps one keep-alive connection
#   per worker thread. botocore is still what finds the credentials (profiles,
#   SSO, the instance role), and its error codes and hints are reused through
#   reefguide.aws.describe_error(). Nothing here depends on the boto3 version,
#   so the pull on the instance (python3-boto3 1.26) runs the same code.
# - An unchanged tree costs one listing, one manifest GET and one lstat per
#   local file: local SHA-256s live in a cache keyed by (size, mtime_ns, inode,
#   ctime_ns), together with the ETag of the object the content was last
#   synced with, so no file is re-read and no object is HEADed.
# - A pulled file is written to a temporary name in its own directory, its
#   SHA-256 checked against the manifest or the object's metadata, then
#   renamed into place: readers never see a partial file.
#
# Python 3.9 syntax (Amazon Linux 2023), standard library + botocore only.

from __future__ import annotations

import argparse
import calendar
import errno
import fnmatch
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import socket
import ssl
import stat
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import quote, unquote_plus, urlsplit
from urllib.request import getproxies, proxy_bypass
from xml.sax.saxutils import escape as xml_escape

try:
    from ansible.module_utils.reefguide.aws import aws_session, describe_error, resolve_endpoint
    from ansible.module_utils.reefguide.paths import UnsafePathError, human_bytes, safe_relpath
except ImportError:  # run as a script or with module_utils/ on sys.path (benchmark, CLI)
    from reefguide.aws import aws_session, describe_error, resolve_endpoint  # type: ignore
    from reefguide.paths import UnsafePathError, human_bytes, safe_relpath  # type: ignore


MiB = 1024 * 1024
MANIFEST_NAME = ".reefguide-manifest.json"
MANIFEST_FORMAT = "reefguide-s3-sync-manifest"
DEFAULT_CONCURRENCY = 16
DEFAULT_PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PARTS = 10000
IN_MEMORY_MAX = 1 * MiB  # bodies up to this are read once and sent from memory
BUFFER_SIZE = 1 * MiB  # streaming buffer per worker: memory ~ concurrency x this
# A file modified this close to the moment it was hashed is not cached: a
# second write in the same timestamp tick would leave its stat unchanged.
# Linux timestamps tick at 10 ms or less; a whole-second mtime suggests a
# coarse file system (ext3, FAT: 1-2 s).
RACY_NS = 100000000
RACY_COARSE_NS = 2000000000
UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TMP_MARK = "reefguide-tmp-"
# .<name>.reefguide-tmp-<run id> or, for names too long for that,
# .reefguide-tmp-<run id>-<hash of the name>
TMP_RE = re.compile(r"^\.(?:.*\.)?reefguide-tmp-[0-9a-f]{12}(?:-[0-9a-f]{16})?$", re.S)
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


# --------------------------------------------------------------------------
# errors


class SyncError(Exception):
    """A failure with a message meant for the user (names the file or key)."""


class LocalFileError(SyncError):
    """A local file or directory that cannot be read or written."""


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


# --------------------------------------------------------------------------
# small helpers


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like '16MiB', '16M', '8 KiB', '1G'
    (units are binary: K = 1024)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    m = re.match(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)$", text, re.I)
    if not m:
        raise SyncError("cannot read size %r: use bytes or a number with K, M, G (e.g. 16MiB)" % (value,))
    power = " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * (1024**power))


def normalise_prefix(prefix: Optional[str]) -> str:
    """'a/b' from '/a/b/', '' for the bucket root; refuses '..' and friends."""
    text = (prefix or "").strip("/")
    if not text:
        return ""
    clean = safe_relpath(text, "prefix")
    if clean != text:
        raise SyncError("prefix %r is not canonical (empty or '.' components); use %r" % (prefix, clean))
    return clean


def check_relpath(rel: str, what: str) -> str:
    """safe_relpath() plus: the name must be stored exactly as given and must
    not look like one of our temporaries. Returns rel unchanged."""
    clean = safe_relpath(rel, what)
    if clean != rel:
        raise UnsafePathError("%s %r has empty or '.' components and cannot be stored as given" % (what, rel))
    if any(TMP_RE.match(part) for part in rel.split("/")):
        raise UnsafePathError("%s %r uses the name pattern of this tool's temporary files" % (what, rel))
    return rel


def parent_dirs(rel: str) -> list[str]:
    """'a', 'a/b' for 'a/b/c'."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def tmp_name(name: str, run_id: str) -> str:
    candidate = ".%s.%s%s" % (name, TMP_MARK, run_id)
    if len(os.fsencode(candidate)) <= 255:
        return candidate
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return ".%s%s-%s" % (TMP_MARK, run_id, digest)


def parse_s3_time(text: Optional[str]) -> int:
    """Nanoseconds since the epoch from '2024-01-02T03:04:05.678Z' (0 if absent)."""
    m = _S3_TIME.match(text or "")
    if not m:
        return 0
    whole = calendar.timegm(tuple(int(g) for g in m.groups()[:6]) + (0, 0, 0))  # type: ignore[arg-type]
    frac = re.match(r"\.(\d+)", text[19:])
    ns = int((frac.group(1) + "000000000")[:9]) if frac else 0
    return whole * 1000000000 + ns


_S3_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)")


def mtime_header(ns: int) -> str:
    """rclone's x-amz-meta-mtime format: seconds with a fraction."""
    return "%d.%09d" % (ns // 1000000000, ns % 1000000000)


def parse_mtime_header(text: Optional[str]) -> int:
    if not text:
        return 0
    m = re.match(r"^(\d+)(?:\.(\d{1,9}))?$", text.strip())
    if not m:
        return 0
    return int(m.group(1)) * 1000000000 + int(((m.group(2) or "") + "000000000")[:9])


class Matcher:
    """exclude patterns: fnmatch on the relative path; a pattern that matches
    a directory excludes everything below it ('cache', 'tmp/*', '*.log')."""

    def __init__(self, patterns: Optional[list[str]]):
        self.regexes = [re.compile(fnmatch.translate(p.strip("/"))) for p in (patterns or []) if p.strip("/")]

    def __call__(self, rel: str) -> bool:
        if not self.regexes:
            return False
        candidates = parent_dirs(rel) + [rel]
        return any(rx.match(c) for rx in self.regexes for c in candidates)


# --------------------------------------------------------------------------
# the S3 wire client


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


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    data: bytes = b""


@dataclass
class FileBody:
    """A byte range of a local file sent as a request body, re-read on retry."""

    path: str
    offset: int
    length: int


def parse_xml(data: bytes) -> ET.Element:
    """An S3 XML document with namespaces dropped: servers differ on
    whether they send S3's namespace at all."""
    root = ET.fromstring(data)
    for el in root.iter():
        if el.tag[:1] == "{":
            el.tag = el.tag.split("}", 1)[1]
    return root


def dns_compatible(bucket: str) -> bool:
    return bool(re.match(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", bucket))


def canonical_query(query: Optional[dict[str, str]]) -> str:
    if not query:
        return ""
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query.items())
    return "&".join("%s=%s" % kv for kv in pairs)


class S3Client:
    """Just enough S3 for a sync, over http.client, thread-safe: each worker
    thread keeps its own keep-alive connection."""

    def __init__(
        self,
        bucket: str,
        credentials: Any,
        region: Optional[str],
        endpoint_url: Optional[str] = None,
        max_attempts: int = 10,
        timeout: float = 60.0,
    ):
        self.bucket = bucket
        self.credentials = credentials
        self.custom_endpoint = bool(endpoint_url)
        self.endpoint_url = endpoint_url
        self.max_attempts = max(1, int(max_attempts))
        self.timeout = timeout
        self.budget = RetryBudget()
        self._local = threading.local()
        self._generation = 0
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._ssl: Optional[ssl.SSLContext] = None
        self.stats_lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.retries = 0
        self._set_endpoint(region or "us-east-1")

    # -- endpoint and connections

    def _set_endpoint(self, region: str) -> None:
        self.region = region
        if self.custom_endpoint:
            parts = urlsplit(self.endpoint_url)
            scheme, host, port = parts.scheme or "https", parts.hostname or "", parts.port
            virtual = False
        else:
            suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
            scheme, host, port = "https", "s3.%s.%s" % (region, suffix), None
            virtual = dns_compatible(self.bucket)
            if virtual:
                host = "%s.%s" % (self.bucket, host)
        self.scheme, self.host = scheme, host
        self.port = port or (443 if scheme == "https" else 80)
        shown = "[%s]" % host if ":" in host else host
        self.host_header = shown if port is None else "%s:%d" % (shown, port)
        self.base_path = "" if virtual else "/" + quote(self.bucket, safe="")
        self._generation += 1

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            cafile = os.environ.get("AWS_CA_BUNDLE")
            if not cafile:
                try:
                    from botocore.httpsession import get_cert_path

                    cafile = get_cert_path(True)
                except Exception:  # pragma: no cover - very old botocore
                    cafile = None
            self._ssl = ssl.create_default_context(cafile=cafile if isinstance(cafile, str) else None)
        return self._ssl

    def _new_connection(self) -> http.client.HTTPConnection:
        if self.scheme != "https":
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        proxy = getproxies().get("https")
        if proxy and not proxy_bypass(self.host):
            # CONNECT tunnel through HTTPS_PROXY, as botocore would.
            p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
            conn = http.client.HTTPSConnection(
                p.hostname, p.port or 8080, timeout=self.timeout, context=self._ssl_context()
            )
            conn.set_tunnel(self.host, self.port)
            return conn
        return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl_context())

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "generation", -1) != self._generation:
            if conn is not None:
                conn.close()
            conn = self._new_connection()
            self._local.conn = conn
            self._local.generation = self._generation
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def close(self) -> None:
        self._drop_connection()

    # -- signing (AWS Signature Version 4, header form)

    def _signing_key(self, secret: str, day: str) -> bytes:
        cache_key = (secret, day, self.region)
        key = self._keys.get(cache_key)
        if key is None:
            key = hmac.new(("AWS4" + secret).encode("utf-8"), day.encode("ascii"), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode("ascii"), hashlib.sha256).digest()
            self._keys[cache_key] = key
        return key

    def sign(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        payload_hash: str,
        now: Optional[float] = None,
    ) -> None:
        """Adds host, x-amz-date, x-amz-content-sha256, the session token and
        Authorization to headers (lower-case names)."""
        frozen = self.credentials.get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = amz_date[:8]
        headers["host"] = self.host_header
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash
        if frozen.token:
            headers["x-amz-security-token"] = frozen.token
        names = sorted(headers)
        canonical_headers = "".join("%s:%s\n" % (n, " ".join(str(headers[n]).split())) for n in names)
        signed = ";".join(names)
        canonical = "\n".join([method, path, query, canonical_headers, signed, payload_hash])
        scope = "%s/%s/s3/aws4_request" % (day, self.region)
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
        )
        signature = hmac.new(self._signing_key(frozen.secret_key, day), to_sign.encode("utf-8"), hashlib.sha256)
        headers["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
            frozen.access_key,
            scope,
            signed,
            signature.hexdigest(),
        )

    # -- requests

    def path_for(self, key: Optional[str]) -> str:
        if key is None:
            return self.base_path or "/"
        return self.base_path + "/" + quote(key, safe="/~")

    def url_for(self, key: Optional[str]) -> str:
        return "s3://%s/%s" % (self.bucket, key or "")

    def _count(self, op: str) -> None:
        with self.stats_lock:
            self.requests[op] = self.requests.get(op, 0) + 1

    def send(
        self,
        op: str,
        method: str,
        key: Optional[str] = None,
        query: Optional[dict[str, str]] = None,
        headers: Optional[dict[str, str]] = None,
        body: Any = None,
        payload_hash: str = UNSIGNED,
        stream: bool = False,
    ) -> Any:
        """One attempt. Returns a Response, or the open HTTPResponse when
        stream=True and the status is 2xx (the caller reads it to the end).
        Raises S3Error for an error response, TransientError for network trouble."""
        self._count(op)
        path = self.path_for(key)
        qs = canonical_query(query)
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if body is not None:
            hdrs["content-length"] = str(body.length if isinstance(body, FileBody) else len(body))
        elif method in ("PUT", "POST"):
            hdrs["content-length"] = "0"
        self.sign(method, path, qs, hdrs, payload_hash)
        conn = self._connection()
        try:
            conn.putrequest(method, path + ("?" + qs if qs else ""), skip_host=True, skip_accept_encoding=True)
            for name, value in hdrs.items():
                conn.putheader(name, value)
            conn.endheaders()
            if isinstance(body, FileBody):
                self._send_file(conn, body)
            elif body:
                conn.send(body)
            resp = conn.getresponse()
            status = resp.status
            if stream and 200 <= status < 300:
                return resp
            data = resp.read()
        except LocalFileError:
            self._drop_connection()
            raise
        except ssl.SSLCertVerificationError as exc:
            self._drop_connection()
            raise SyncError(
                "the TLS certificate of %s is not trusted (%s); if a proxy or private endpoint "
                "re-signs traffic, point AWS_CA_BUNDLE at its CA certificate" % (self.host, exc.verify_message or exc)
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise TransientError("%s %s: %s" % (op, self.url_for(key), exc or type(exc).__name__)) from exc
        rheaders = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self._drop_connection()
        if status >= 300:
            raise self._error(op, status, rheaders, data, key)
        return Response(status, rheaders, data)

    def _send_file(self, conn: http.client.HTTPConnection, body: FileBody) -> None:
        try:
            fh = open(body.path, "rb", buffering=0)
        except OSError as exc:
            raise LocalFileError("cannot read %s: %s" % (body.path, exc.strerror or exc)) from exc
        with fh:
            sock = conn.sock
            if not isinstance(sock, ssl.SSLSocket):
                # plain HTTP: the kernel copies file to socket (no GIL, no buffer)
                sent = 0
                while sent < body.length:
                    try:
                        n = os.sendfile(sock.fileno(), fh.fileno(), body.offset + sent, body.length - sent)
                    except BlockingIOError:  # socket timeout mode: wait for room
                        _wait_writable(sock, self.timeout)
                        continue
                    if n == 0:
                        raise LocalFileError("%s became shorter while it was being sent" % body.path)
                    sent += n
                return
            buf = _thread_buffer()
            view = memoryview(buf)
            fh.seek(body.offset)
            left = body.length
            while left > 0:
                try:
                    n = fh.readinto(view[: min(left, len(buf))])
                except OSError as exc:
                    raise LocalFileError("cannot read %s: %s" % (body.path, exc.strerror or exc)) from exc
                if not n:
                    raise LocalFileError("%s became shorter while it was being sent" % body.path)
                conn.send(view[:n])
                left -= n

    def _error(self, op: str, status: int, headers: dict[str, str], data: bytes, key: Optional[str]) -> S3Error:
        code, message = "", ""
        if data:
            try:
                root = ET.fromstring(data)
                code = root.findtext("Code") or ""
                message = root.findtext("Message") or ""
            except ET.ParseError:
                message = data[:200].decode("utf-8", "replace")
        if not code:
            code = {
                301: "PermanentRedirect",
                304: "NotModified",
                400: "BadRequest",
                403: "AccessDenied",
                404: "NoSuchKey" if key else "NoSuchBucket",
                412: "PreconditionFailed",
                429: "SlowDown",
                500: "InternalError",
                503: "SlowDown",
            }.get(status, "HTTP%d" % status)
        where = self.url_for(key)
        return S3Error(code, "%s (%s, HTTP %d)" % (message or code, where, status), status, op, headers)

    def retriable(self, exc: BaseException) -> bool:
        if isinstance(exc, TransientError):
            return True
        if isinstance(exc, S3Error):
            return exc.status >= 500 or exc.status == 429 or exc.code in RETRY_CODES
        return False

    def retrying(self, fn: Callable[[], Any]) -> Any:
        """fn() with bounded retries and jittered exponential back-off; a bucket
        in another region is followed once (AWS endpoints only)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn()
                self.budget.refund()
                return result
            except (TransientError, S3Error) as exc:
                if self._follow_region(exc):
                    continue
                if not self.retriable(exc) or attempt >= self.max_attempts or not self.budget.take():
                    raise
                with self.stats_lock:
                    self.retries += 1
                time.sleep(random.uniform(0, min(20.0, 0.1 * (2**attempt))))

    def _follow_region(self, exc: BaseException) -> bool:
        if self.custom_endpoint or not isinstance(exc, S3Error) or exc.status not in (301, 400):
            return False
        region = exc.headers.get("x-amz-bucket-region")
        if not region or region == self.region:
            return False
        self._set_endpoint(region)
        return True

    def call(self, op: str, method: str, key: Optional[str] = None, **kwargs: Any) -> Response:
        return self.retrying(lambda: self.send(op, method, key, **kwargs))

    # -- operations

    def list_objects(self, prefix: str) -> Iterator[tuple[str, int, str, str]]:
        """(key, size, etag, LastModified text) for every key under prefix."""
        token = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            root = parse_xml(self.call("ListObjectsV2", "GET", None, query=query).data)
            url_encoded = (root.findtext("EncodingType") or "").lower() == "url"
            for item in root.iter("Contents"):
                key = item.findtext("Key") or ""
                if url_encoded:
                    key = unquote_plus(key)
                yield (
                    key,
                    int(item.findtext("Size") or 0),
                    (item.findtext("ETag") or "").strip('"'),
                    item.findtext("LastModified") or "",
                )
            token = root.findtext("NextContinuationToken")
            if (root.findtext("IsTruncated") or "").lower() != "true" or not token:
                return

    def get_small(self, key: str) -> Optional[bytes]:
        """A whole (small) object, None if it does not exist."""
        try:
            return self.call("GetObject", "GET", key).data
        except S3Error as exc:
            if exc.status == 404 and exc.code in ("NoSuchKey", "NotFound"):
                return None
            raise

    def head(self, key: str) -> dict[str, str]:
        return self.call("HeadObject", "HEAD", key).headers

    def delete_objects(self, keys: list[str]) -> None:
        """Batches of 1000; keys XML 1.0 cannot carry go one by one."""
        plain = [k for k in keys if not re.search(r"[\x00-\x1f]", k)]
        for k in keys:
            if re.search(r"[\x00-\x1f]", k):
                self.call("DeleteObject", "DELETE", k)
        for i in range(0, len(plain), 1000):
            batch = plain[i : i + 1000]
            body = (
                "<Delete><Quiet>true</Quiet>"
                + "".join("<Object><Key>%s</Key></Object>" % xml_escape(k) for k in batch)
                + "</Delete>"
            ).encode("utf-8")
            md5 = _md5_b64(body)
            resp = self.call(
                "DeleteObjects",
                "POST",
                None,
                query={"delete": ""},
                headers={"content-md5": md5, "content-type": "application/xml"},
                body=body,
                payload_hash=hashlib.sha256(body).hexdigest(),
            )
            root = parse_xml(resp.data) if resp.data else None
            if root is not None:
                for err in root.iter("Error"):
                    raise S3Error(
                        err.findtext("Code") or "DeleteFailed",
                        "%s (%s)" % (err.findtext("Message") or "", self.url_for(err.findtext("Key"))),
                        200,
                        "DeleteObjects",
                    )


def _md5_b64(data: bytes) -> str:
    import base64

    try:
        digest = hashlib.md5(data, usedforsecurity=False).digest()  # type: ignore[call-arg]
    except TypeError:  # pragma: no cover - Python < 3.9
        digest = hashlib.md5(data).digest()
    return base64.b64encode(digest).decode("ascii")


def _wait_writable(sock: socket.socket, timeout: float) -> None:
    import select

    _, writable, _ = select.select([], [sock], [], timeout)
    if not writable:
        raise socket.timeout("timed out sending the request body")


_buffers = threading.local()


def _thread_buffer() -> bytearray:
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(BUFFER_SIZE)
    return buf


def hash_file(path: str, offset: int = 0, length: Optional[int] = None, hasher: Any = None) -> Any:
    """SHA-256 object updated with the bytes of path[offset:offset+length]."""
    h = hasher or hashlib.sha256()
    buf = _thread_buffer()
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as fh:
            if offset:
                fh.seek(offset)
            left = length
            while left is None or left > 0:
                n = fh.readinto(view if left is None else view[: min(left, len(buf))])
                if not n:
                    break
                h.update(view[:n])
                if left is not None:
                    left -= n
    except OSError as exc:
        raise LocalFileError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    return h


# --------------------------------------------------------------------------
# local state: files, checksum cache


@dataclass
class LocalFile:
    rel: str
    path: str  # what is read (push; a symlink's target) or replaced (pull)
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    kind: str = "file"  # file | link | other (other kinds only in a pull destination)


@dataclass
class RemoteObject:
    rel: str
    key: str
    size: int
    etag: str
    modified: str  # LastModified as listed; parsed only when needed
    sha256: Optional[str] = None
    source_mtime_ns: int = 0  # the pushed file's mtime (manifest or metadata)

    @property
    def mtime_ns(self) -> int:
        return self.source_mtime_ns or parse_s3_time(self.modified)


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _file_key(lf: LocalFile) -> list[int]:
    return [lf.size, lf.mtime_ns, lf.ino, lf.ctime_ns]


def default_cache_path(root: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:24]
    return os.path.join(base, "reefguide-efs", "checksums", digest + ".json")


class ChecksumCache:
    """rel -> [size, mtime_ns, ino, ctime_ns, sha256, etag]: the SHA-256 of a
    local file as long as its stat is unchanged, and the ETag of the object
    it was last found equal to. Entries whose mtime is within RACY_NS of the
    moment they were hashed are not kept."""

    VERSION = 1

    def __init__(self, path: Optional[str], root: str, enabled: bool = True):
        self.path = path
        self.root = os.path.realpath(root)
        self.entries: dict[str, list] = {}
        self.lock = threading.Lock()
        self.dirty = False
        if path and enabled:
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("version") == self.VERSION and doc.get("root") == self.root:
            entries = doc.get("files")
            if isinstance(entries, dict):
                self.entries = entries

    def lookup(self, rel: str, key: list[int]) -> Optional[list]:
        entry = self.entries.get(rel)
        if entry and isinstance(entry, list) and len(entry) == 6 and entry[:4] == key:
            return entry
        return None

    def store(self, rel: str, key: list[int], sha: str, etag: Optional[str], hashed_at_ns: int) -> None:
        with self.lock:
            margin = RACY_COARSE_NS if key[1] % 1000000000 == 0 else RACY_NS
            if key[1] >= hashed_at_ns - margin:
                self.entries.pop(rel, None)
            else:
                self.entries[rel] = key + [sha, etag]
            self.dirty = True

    def save(self, keep: set[str]) -> None:
        if not self.path:
            return
        files = {rel: e for rel, e in self.entries.items() if rel in keep}
        if not self.dirty and len(files) == len(self.entries):
            return
        doc = {"version": self.VERSION, "root": self.root, "files": files}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        os.replace(tmp, self.path)


def _check_utf8(rel: str, full: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalFileError(
            "file name %r is not valid UTF-8 and cannot become an S3 key: rename it" % os.fsencode(full)
        )


_EUID = os.geteuid() if hasattr(os, "geteuid") else -1


def _readable(path: str, st: os.stat_result) -> bool:
    """os.access() only when the mode bits leave doubt (one syscall saved
    per file in the common case: root, or the owner with read permission)."""
    if _EUID == 0 or (st.st_uid == _EUID and st.st_mode & stat.S_IRUSR):
        return True
    return os.access(path, os.R_OK)


def scan_source(root: str, excluded: Matcher) -> tuple[dict[str, LocalFile], list[str], list[str]]:
    """Files to push below root (or root itself when it is a file), the empty
    directories, and warnings. Symlinks whose target is inside root are
    followed; one that escapes root, dangles or loops is an error."""
    files: dict[str, LocalFile] = {}
    empty: list[str] = []
    warnings: list[str] = []
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise LocalFileError("local path %s does not exist" % root)
    except OSError as exc:
        raise LocalFileError("cannot read local path %s: %s" % (root, exc.strerror or exc))
    if stat.S_ISREG(st.st_mode):
        name = os.path.basename(os.path.normpath(root))
        _check_utf8(name, root)
        check_relpath(name, "file name")
        if not _readable(root, st):
            raise LocalFileError("cannot read %s: permission denied" % root)
        files[name] = LocalFile(name, root, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        return files, empty, warnings
    if not stat.S_ISDIR(st.st_mode):
        raise LocalFileError("local path %s is neither a file nor a directory" % root)
    real_root = os.path.realpath(root)
    visiting = {real_root}

    def walk(dirpath: str, prefix: str) -> bool:
        """Adds what is below dirpath; True when something was found."""
        try:
            entries = list(os.scandir(dirpath))
        except OSError as exc:
            raise LocalFileError("cannot read directory %s: %s" % (dirpath, exc.strerror or exc))
        found = False
        for entry in entries:
            rel = prefix + entry.name
            if excluded(rel):
                found = True  # an excluded entry keeps its directory non-empty
                continue
            _check_utf8(rel, entry.path)
            if TMP_RE.match(entry.name):
                warnings.append("skipped %s: a temporary file of an interrupted pull" % entry.path)
                continue
            if rel == MANIFEST_NAME:
                raise LocalFileError("%s uses the name this tool keeps its manifest under; rename it" % entry.path)
            path = entry.path
            try:
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    if not (target == real_root or target.startswith(real_root.rstrip("/") + "/")):
                        raise LocalFileError(
                            "symlink %s points outside the source directory %s (to %s): "
                            "copy the data in or exclude the link" % (path, root, target)
                        )
                    try:
                        est = os.stat(path)
                    except FileNotFoundError:
                        raise LocalFileError("symlink %s is dangling (its target %s does not exist)" % (path, target))
                    if stat.S_ISDIR(est.st_mode):
                        if target in visiting:
                            raise LocalFileError("symlink %s makes a loop (to %s)" % (path, target))
                        visiting.add(target)
                        if not walk(path, rel + "/"):
                            empty.append(rel)
                        visiting.discard(target)
                        found = True
                        continue
                    path = target
                else:
                    est = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(est.st_mode):
                        if not walk(path, rel + "/"):
                            empty.append(rel)
                        found = True
                        continue
            except FileNotFoundError:
                continue  # vanished while scanning
            if not stat.S_ISREG(est.st_mode):
                warnings.append("skipped %s: not a regular file" % entry.path)
                continue
            if not _readable(path, est):
                raise LocalFileError("cannot read %s: permission denied" % entry.path)
            files[rel] = LocalFile(rel, path, est.st_size, est.st_mtime_ns, est.st_ino, est.st_ctime_ns)
            found = True
        return found

    walk(root, "")
    return files, empty, warnings


def scan_dest(root: str, excluded: Matcher) -> tuple[dict[str, LocalFile], set[str], set[str], list[str]]:
    """What a pull destination holds, symlinks never followed: entries
    (files, links, others), real directories, directories that must stay
    because they hold excluded entries, and temporaries of earlier runs."""
    files: dict[str, LocalFile] = {}
    dirs: set[str] = set()
    keep: set[str] = set()
    temporaries: list[str] = []
    if not os.path.lexists(root):
        return files, dirs, keep, temporaries
    if not os.path.isdir(root):
        raise LocalFileError("destination %s exists and is not a directory" % root)
    stack = [("", root)]
    while stack:
        prefix, dirpath = stack.pop()
        try:
            entries = list(os.scandir(dirpath))
        except OSError as exc:
            raise LocalFileError("cannot read directory %s: %s" % (dirpath, exc.strerror or exc))
        for entry in entries:
            rel = prefix + entry.name
            if TMP_RE.match(entry.name):
                temporaries.append(rel)
                continue
            if excluded(rel):
                keep.update(parent_dirs(rel))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                dirs.add(rel)
                stack.append((rel + "/", entry.path))
                continue
            kind = "file" if stat.S_ISREG(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "other"
            files[rel] = LocalFile(rel, entry.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, kind)
    return files, dirs, keep, temporaries


# --------------------------------------------------------------------------
# the remote side: listing + manifest


@dataclass
class RemoteState:
    files: dict[str, RemoteObject] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)  # 'dir/' keys, as 'dir'
    bad: list[str] = field(default_factory=list)  # keys that cannot be stored locally
    manifest: Optional[dict] = None
    manifest_etag: Optional[str] = None
    manifest_dirs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_remote(client: S3Client, prefix: str, excluded: Matcher) -> RemoteState:
    state = RemoteState()
    base = prefix + "/" if prefix else ""
    for key, size, etag, modified in client.list_objects(base):
        rel = key[len(base) :]
        if rel == MANIFEST_NAME:
            state.manifest_etag = etag
            continue
        try:
            if rel.endswith("/"):
                if rel.strip("/"):
                    state.markers.add(check_relpath(rel[:-1], "key"))
                continue
            check_relpath(rel, "key")
        except UnsafePathError as exc:
            state.bad.append("%r: %s" % (key, exc))
            continue
        if excluded(rel):
            continue
        state.files[rel] = RemoteObject(rel, key, size, etag, modified)
    if state.manifest_etag is not None:
        _apply_manifest(client, base + MANIFEST_NAME, state)
    return state


def _apply_manifest(client: S3Client, key: str, state: RemoteState) -> None:
    """Fills in the SHA-256 (and source mtime) of every listed object whose
    size and ETag still match its manifest entry."""
    data = client.get_small(key)
    if data is None:
        return
    try:
        doc = json.loads(data.decode("utf-8"))
        if doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("files"), dict):
            raise ValueError("not a %s" % MANIFEST_FORMAT)
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        state.warnings.append("ignored unreadable manifest %s: %s" % (client.url_for(key), exc))
        return
    state.manifest = doc
    for rel, entry in doc["files"].items():
        obj = state.files.get(rel)
        if not obj or not isinstance(entry, dict):
            continue
        if entry.get("size") == obj.size and entry.get("etag") == obj.etag and _is_sha(entry.get("sha256")):
            obj.sha256 = entry["sha256"]
            if isinstance(entry.get("mtime_ns"), int) and entry["mtime_ns"] > 0:
                obj.source_mtime_ns = entry["mtime_ns"]
    for rel in doc.get("dirs") or []:
        try:
            state.manifest_dirs.append(check_relpath(rel, "manifest directory"))
        except (UnsafePathError, TypeError):
            state.bad.append("manifest directory %r" % (rel,))


def _is_sha(value: Any) -> bool:
    return isinstance(value, str) and bool(re.match(r"^[0-9a-f]{64}$", value))


# --------------------------------------------------------------------------
# progress


class Progress:
    """Counters shared by the workers; written as JSON to progress_file every
    interval seconds (atomically) so an async play can poll it."""

    def __init__(self, path: Optional[str], interval: float, direction: str):
        self.path = path
        self.interval = max(0.2, interval)
        self.direction = direction
        self.lock = threading.Lock()
        self.phase = "scanning"
        self.files_total = self.bytes_total = 0
        self.files_done = self.bytes_done = 0
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if path:
            self.write()
            self._thread = threading.Thread(target=self._run, name="s3sync-progress", daemon=True)
            self._thread.start()

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes_done += n

    def file_done(self) -> None:
        with self.lock:
            self.files_done += 1

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.write()

    def snapshot(self) -> dict[str, Any]:
        elapsed = time.time() - self.started
        with self.lock:
            done, total = self.bytes_done, self.bytes_total
            doc = dict(
                direction=self.direction,
                phase=self.phase,
                files_total=self.files_total,
                files_done=self.files_done,
                bytes_total=total,
                bytes_done=done,
            )
        rate = done / elapsed if elapsed > 0 else 0.0
        doc.update(
            elapsed_seconds=round(elapsed, 3),
            throughput_bytes_per_second=round(rate),
            percent=round(100.0 * done / total, 1) if total else (100.0 if self.phase == "done" else 0.0),
            eta_seconds=round((total - done) / rate, 1) if rate > 0 and total > done else None,
            pid=os.getpid(),
            updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        return doc

    def write(self) -> None:
        if not self.path:
            return
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.snapshot(), fh)
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is best effort; the sync itself must not fail on it

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def close(self, phase: str) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.phase = phase
        self.write()


# --------------------------------------------------------------------------
# task runner


class Runner:
    """A thread pool whose tasks may submit more tasks (the parts of a large
    file); wait() returns when all are done and raises the first failure.
    Every task runs even after a failure: tasks check `failed` and return
    early themselves, so part tasks can still do their bookkeeping (abort
    the upload, remove the temporary)."""

    def __init__(self, concurrency: int):
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3sync")
        self.cond = threading.Condition()
        self.pending = 0
        self.errors: list[BaseException] = []

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self.cond:
            self.pending += 1
        self.pool.submit(self._run, fn, args)

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by wait()
            with self.cond:
                self.errors.append(exc)
        finally:
            with self.cond:
                self.pending -= 1
                if self.pending == 0:
                    self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            while self.pending:
                self.cond.wait()
        if self.errors:
            raise self.errors[0]

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)


# --------------------------------------------------------------------------
# the sync


@dataclass
class SyncOptions:
    direction: str  # push | pull
    bucket: str
    path: str
    prefix: str = ""
    mode: str = "merge"  # merge | mirror
    concurrency: int = DEFAULT_CONCURRENCY
    part_size: int = DEFAULT_PART_SIZE
    sse: Optional[str] = "AES256"  # AES256 | aws:kms | None
    sse_kms_key_id: Optional[str] = None
    exclude: list[str] = field(default_factory=list)
    checksum_cache: Optional[str] = None  # None: a file under ~/.cache/reefguide-efs
    use_checksum_cache: bool = True
    rehash: bool = False
    progress_file: Optional[str] = None
    progress_interval: float = 2.0
    max_delete: Optional[int] = None
    dry_run: bool = False
    region: Optional[str] = None
    profile: Optional[str] = None
    endpoint_url: Optional[str] = None
    max_attempts: int = 10
    list_limit: int = 20


@dataclass
class Plan:
    transfer: list[tuple[str, int]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    delete_bytes: int = 0
    skip_files: int = 0
    skip_bytes: int = 0
    dirs_create: list[str] = field(default_factory=list)
    dirs_remove: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)


class Sync:
    """One sync run. run() returns the result dict or raises SyncError,
    UnsafePathError or an AWS error; after a failure result() still
    describes what had been done."""

    def __init__(self, opts: SyncOptions, credentials: Any = None):
        self.opts = opts
        self._validate()
        self.prefix = normalise_prefix(opts.prefix)
        self.excluded = Matcher(opts.exclude)
        self.run_id = os.urandom(6).hex()
        self.started = time.time()
        self.warnings: list[str] = []
        self.stats_lock = threading.Lock()
        self.transferred_files = self.transferred_bytes = 0
        self.deleted = self.dirs_created = self.dirs_removed = self.temporaries_removed = 0
        self.hashed_files = self.hashed_bytes = 0
        self.multipart_files = 0
        self.manifest_written = False
        self.plan = Plan()
        self.credentials = credentials
        self.client: Optional[S3Client] = None
        self.progress = Progress(None if opts.dry_run else opts.progress_file, opts.progress_interval, opts.direction)
        self.root = os.path.abspath(os.path.expanduser(opts.path))
        self.cache: Optional[ChecksumCache] = None
        self.seen: set[str] = set()
        self._lock_fd: Optional[int] = None
        self._dirs_checked: set[str] = set()

    def _validate(self) -> None:
        o = self.opts
        if o.direction not in ("push", "pull"):
            raise SyncError("direction must be push or pull, not %r" % o.direction)
        if o.mode not in ("merge", "mirror"):
            raise SyncError("mode must be merge or mirror, not %r" % o.mode)
        if not o.bucket or "/" in o.bucket:
            raise SyncError("bucket %r is not a bucket name (give the key part as prefix)" % o.bucket)
        if not 1 <= o.concurrency <= 256:
            raise SyncError("concurrency must be between 1 and 256, not %d" % o.concurrency)
        if o.part_size < MIN_PART_SIZE:
            raise SyncError("part_size must be at least 5 MiB (S3's minimum part size), not %d" % o.part_size)
        if o.sse not in (None, "AES256", "aws:kms"):
            raise SyncError("sse must be AES256, aws:kms or none, not %r" % o.sse)
        if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
            raise SyncError("the file system encoding is %s; run with a UTF-8 locale" % sys.getfilesystemencoding())

    # -- setup

    def _client(self) -> S3Client:
        o = self.opts
        creds = self.credentials
        region = o.region
        if creds is None:
            creds, region = environment_credentials(o.profile, region)
        if creds is None:
            from botocore.exceptions import NoCredentialsError

            session = aws_session(o.region, o.profile)
            creds = session.get_credentials()
            if creds is None:
                raise NoCredentialsError()
            region = region or session.region_name
        return S3Client(o.bucket, creds, region, resolve_endpoint("s3", o.endpoint_url), o.max_attempts)

    def _open_cache(self) -> None:
        o = self.opts
        path = o.checksum_cache or default_cache_path(self.root)
        self.cache = ChecksumCache(path, self.root, enabled=o.use_checksum_cache and not o.rehash)
        if not o.use_checksum_cache:
            self.cache.path = None

    def _take_lock(self) -> None:
        """A pull holds its local root alone (temporaries of another live run
        must not be swept); pushes only read it, so several may share it (one
        src staged to several deployments at once). The checksum cache is
        replaced atomically, so concurrent pushes at worst drop entries."""
        if self.opts.dry_run:
            return
        import fcntl

        lock_path = default_cache_path(self.root)[: -len(".json")] + ".lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = fcntl.LOCK_SH if self.opts.direction == "push" else fcntl.LOCK_EX
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SyncError(
                "another sync of %s is running (lock %s held); wait for it or stop it" % (self.root, lock_path)
            )
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.client:
            self.client.close()

    # -- shared comparison

    def _local_sha(self, lf: LocalFile) -> tuple[str, Optional[str]]:
        """(sha256, etag it was last synced with) from the cache, else hashed."""
        entry = self.cache.lookup(lf.rel, _file_key(lf)) if self.cache else None
        if entry:
            return entry[4], entry[5]
        hashed_at = time.time_ns()
        sha = hash_file(lf.path).hexdigest()
        with self.stats_lock:
            self.hashed_files += 1
            self.hashed_bytes += lf.size
        if self.cache:
            self.cache.store(lf.rel, _file_key(lf), sha, None, hashed_at)
        return sha, None

    def _remote_sha(self, obj: RemoteObject) -> Optional[str]:
        if obj.sha256:
            return obj.sha256
        headers = self.client.head(obj.key)
        if headers.get("etag", "").strip('"') != obj.etag:
            return None  # replaced since the listing: treat as different
        sha = headers.get("x-amz-meta-sha256", "").lower()
        if _is_sha(sha):
            obj.sha256 = sha
            obj.source_mtime_ns = parse_mtime_header(headers.get("x-amz-meta-mtime")) or obj.source_mtime_ns
            return sha
        return None

    def _compare(self, pairs: list[tuple[LocalFile, RemoteObject]]) -> list[bool]:
        """For each (local, remote) pair: True when the contents differ.
        Cheap answers first; hashing and HEADs run in the pool."""
        result: list[Optional[bool]] = []
        slow: list[int] = []
        for i, (lf, obj) in enumerate(pairs):
            if lf.kind != "file" or lf.size != obj.size:
                result.append(True)
                continue
            entry = self.cache.lookup(lf.rel, _file_key(lf)) if self.cache else None
            if entry and entry[5] and entry[5] == obj.etag:
                result.append(False)  # this exact object was synced from/to this exact file
                obj.sha256 = obj.sha256 or entry[4]
                continue
            result.append(None)
            slow.append(i)
        if slow:
            runner = Runner(self.opts.concurrency)

            def decide(i: int) -> None:
                if runner.failed:
                    return
                lf, obj = pairs[i]
                sha, _ = self._local_sha(lf)
                remote = self._remote_sha(obj)
                result[i] = remote != sha
                if remote == sha and self.cache:
                    self.cache.store(lf.rel, _file_key(lf), sha, obj.etag, time.time_ns())

            try:
                for i in slow:
                    runner.submit(decide, i)
                runner.wait()
            finally:
                runner.shutdown()
        return [bool(r) for r in result]

    # -- entry point

    def run(self) -> dict[str, Any]:
        try:
            self.client = self._client()
            self._open_cache()
            self._take_lock()
            if self.opts.direction == "push":
                self._push()
            else:
                self._pull()
            self.progress.close("done")
            return self.result()
        except BaseException:
            self.progress.close("failed")
            raise
        finally:
            if self.cache and not self.opts.dry_run:
                try:
                    self.cache.save(self.seen)
                except OSError as exc:
                    self.warnings.append("could not save the checksum cache %s: %s" % (self.cache.path, exc))
            self._release()

    def _scan_both(self, scan: Callable[[], Any]) -> tuple[Any, RemoteState]:
        """The local scan and the remote listing overlap (disk vs network)."""
        box: dict[str, Any] = {}

        def remote() -> None:
            try:
                box["remote"] = read_remote(self.client, self.prefix, self.excluded)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                box["error"] = exc

        thread = threading.Thread(target=remote, name="s3sync-list", daemon=True)
        thread.start()
        try:
            local = scan()
        finally:
            thread.join()
        if "error" in box:
            raise box["error"]
        state = box["remote"]
        self.warnings.extend(state.warnings)
        return local, state

    def _check_max_delete(self) -> None:
        limit = self.opts.max_delete
        if limit is not None and limit >= 0 and len(self.plan.delete) > limit:
            raise SyncError(
                "mode=mirror would delete %d entries, more than max_delete=%d (first: %s); "
                "check path and prefix, or raise max_delete"
                % (len(self.plan.delete), limit, ", ".join(self.plan.delete[:5]))
            )

    # -- push

    def _key(self, rel: str) -> str:
        return self.prefix + "/" + rel if self.prefix else rel

    def _push(self) -> None:
        (files, empty_dirs, warnings), remote = self._scan_both(lambda: scan_source(self.root, self.excluded))
        self.warnings.extend(warnings)
        self.seen = set(files)
        self.progress.set_phase("comparing")
        both = [(files[rel], remote.files[rel]) for rel in sorted(files) if rel in remote.files]
        differs = dict(zip([lf.rel for lf, _ in both], self._compare(both)))
        uploads = [files[rel] for rel in sorted(files) if differs.get(rel, rel not in remote.files)]
        # biggest first: long transfers start early, small files fill the gaps
        uploads.sort(key=lambda lf: -lf.size)
        plan = self.plan
        plan.transfer = [(lf.rel, lf.size) for lf in uploads]
        plan.skip_files = len(files) - len(uploads)
        plan.skip_bytes = sum(lf.size for lf in files.values()) - sum(lf.size for lf in uploads)
        if self.opts.mode == "mirror":
            extra = [rel for rel in remote.files if rel not in files]
            local_dirs = set(empty_dirs)
            for rel in files:
                local_dirs.update(parent_dirs(rel))
            plan.delete = sorted(extra) + sorted(d + "/" for d in remote.markers if d not in local_dirs)
            plan.delete_bytes = sum(remote.files[rel].size for rel in extra)
            self._check_max_delete()
        if self.opts.dry_run:
            return
        self.progress.files_total = len(uploads)
        self.progress.bytes_total = sum(lf.size for lf in uploads)
        self.progress.set_phase("transferring")
        uploaded: dict[str, tuple[str, str, int, int]] = {}  # rel -> sha, etag, size, mtime_ns
        runner = Runner(self.opts.concurrency)
        try:
            for lf in uploads:
                runner.submit(self._upload, lf, runner, uploaded)
            runner.wait()
        except BaseException:
            self._partial_manifest(files, remote, uploaded, empty_dirs)
            raise
        finally:
            runner.shutdown()
        if plan.delete:
            self.progress.set_phase("deleting")
            self.client.delete_objects([self._key(rel) for rel in plan.delete])
            self.deleted = len(plan.delete)
        self._write_manifest(files, remote, uploaded, empty_dirs, final=True)

    def _partial_manifest(
        self, files: dict[str, LocalFile], remote: RemoteState, uploaded: dict, empty_dirs: list[str]
    ) -> None:
        """After a failed push, record what did get uploaded so the re-run
        does not need a HEAD for it. Best effort: the failure is what counts."""
        if not uploaded:
            return
        try:
            self._write_manifest(files, remote, uploaded, empty_dirs, final=False)
        except (S3Error, TransientError, SyncError) as exc:
            self.warnings.append("could not update the manifest after the failure: %s" % exc)

    def _put_headers(self, sha: str, mtime_ns: int) -> dict[str, str]:
        headers = {"x-amz-meta-sha256": sha, "x-amz-meta-mtime": mtime_header(mtime_ns)}
        if self.opts.sse:
            headers["x-amz-server-side-encryption"] = self.opts.sse
            if self.opts.sse == "aws:kms" and self.opts.sse_kms_key_id:
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.opts.sse_kms_key_id
        return headers

    def _uploaded(self, lf: LocalFile, key: list[int], sha: str, etag: str, uploaded: dict, hashed_at: int) -> None:
        with self.stats_lock:
            uploaded[lf.rel] = (sha, etag, key[0], key[1])
            self.transferred_files += 1
            self.transferred_bytes += key[0]
        if self.cache:
            self.cache.store(lf.rel, key, sha, etag, hashed_at)
        self.progress.file_done()

    def _open_stat(self, lf: LocalFile) -> tuple[Any, os.stat_result]:
        try:
            fh = open(lf.path, "rb", buffering=0)
            return fh, os.fstat(fh.fileno())
        except OSError as exc:
            raise LocalFileError("cannot read %s: %s" % (lf.path, exc.strerror or exc)) from exc

    def _upload(self, lf: LocalFile, runner: Runner, uploaded: dict) -> None:
        if runner.failed:
            return
        if lf.size > self.opts.part_size:
            self._upload_multipart(lf, runner, uploaded)
            return
        key = self._key(lf.rel)
        fh, st = self._open_stat(lf)
        hashed_at = time.time_ns()
        with fh:
            if st.st_size <= IN_MEMORY_MAX:
                try:
                    data = fh.read()
                except OSError as exc:
                    raise LocalFileError("cannot read %s: %s" % (lf.path, exc.strerror or exc)) from exc
                sha = hashlib.sha256(data).hexdigest()
                body: Any = data
                size = len(data)
            else:
                sha = self._sha_for_upload(lf, st)
                body = FileBody(lf.path, 0, st.st_size)
                size = st.st_size
        # The payload hash is the file's SHA-256: S3 rejects a body that does
        # not match it, so a file changing under us cannot be stored silently.
        resp = self.client.call(
            "PutObject", "PUT", key, headers=self._put_headers(sha, st.st_mtime_ns), body=body, payload_hash=sha
        )
        self.progress.add_bytes(size)
        self._uploaded(lf, _stat_key(st), sha, resp.headers.get("etag", "").strip('"'), uploaded, hashed_at)

    def _sha_for_upload(self, lf: LocalFile, st: os.stat_result) -> str:
        entry = self.cache.lookup(lf.rel, _stat_key(st)) if self.cache else None
        if entry:
            return entry[4]
        sha = hash_file(lf.path).hexdigest()
        with self.stats_lock:
            self.hashed_files += 1
            self.hashed_bytes += st.st_size
        return sha

    def _part_ranges(self, size: int) -> list[tuple[int, int]]:
        part = max(self.opts.part_size, -(-size // MAX_PARTS))
        return [(off, min(part, size - off)) for off in range(0, size, part)]

    def _upload_multipart(self, lf: LocalFile, runner: Runner, uploaded: dict) -> None:
        key = self._key(lf.rel)
        fh, st = self._open_stat(lf)
        fh.close()
        hashed_at = time.time_ns()
        sha = self._sha_for_upload(lf, st)
        resp = self.client.call(
            "CreateMultipartUpload", "POST", key, query={"uploads": ""}, headers=self._put_headers(sha, st.st_mtime_ns)
        )
        upload_id = parse_xml(resp.data).findtext("UploadId")
        if not upload_id:
            raise SyncError("CreateMultipartUpload for %s returned no UploadId" % self.client.url_for(key))
        ranges = self._part_ranges(st.st_size)
        job = _MultipartUpload(self, lf, key, upload_id, ranges, st, sha, hashed_at, uploaded)
        with self.stats_lock:
            self.multipart_files += 1
        for number in range(1, len(ranges) + 1):
            runner.submit(job.part, number, runner)

    # -- manifest

    def _write_manifest(
        self,
        files: dict[str, LocalFile],
        remote: RemoteState,
        uploaded: dict[str, tuple[str, str, int, int]],
        empty_dirs: list[str],
        final: bool,
    ) -> None:
        """The manifest lists every object under the prefix whose SHA-256 is
        known, keyed by relative path, with the ETag it was computed for (a
        reader trusts an entry only while size and ETag still match). It is
        rewritten only when its content changes."""
        entries: dict[str, dict] = {}
        deleted = set(self.plan.delete) if final else set()
        for rel, obj in remote.files.items():
            if obj.sha256 and rel not in deleted and rel not in uploaded:
                entries[rel] = {"size": obj.size, "sha256": obj.sha256, "etag": obj.etag, "mtime_ns": obj.mtime_ns}
        for rel, (sha, etag, size, mtime_ns) in uploaded.items():
            entries[rel] = {"size": size, "sha256": sha, "etag": etag, "mtime_ns": mtime_ns}
        dirs = sorted(set(empty_dirs))
        if self.opts.mode == "merge" and remote.manifest:
            dirs = sorted(set(dirs) | set(remote.manifest_dirs))
        old = remote.manifest or {}
        if old.get("files") == entries and sorted(old.get("dirs") or []) == dirs:
            return
        doc = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": entries,
            "dirs": dirs,
        }
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
        sha = hashlib.sha256(body).hexdigest()
        headers = {"content-type": "application/json"}
        if self.opts.sse:
            headers.update({k: v for k, v in self._put_headers(sha, 0).items() if "encryption" in k})
        self.client.call("PutObject", "PUT", self._key(MANIFEST_NAME), headers=headers, body=body, payload_hash=sha)
        remote.manifest = doc
        self.manifest_written = True

    # -- pull

    def _pull(self) -> None:
        (local, local_dirs, keep_dirs, temporaries), remote = self._scan_both(
            lambda: scan_dest(self.root, self.excluded)
        )
        if remote.bad:
            raise SyncError(
                "refusing to pull s3://%s/%s: %d key(s) cannot be stored safely below %s: %s"
                % (self.opts.bucket, self.prefix, len(remote.bad), self.root, "; ".join(remote.bad[:10]))
            )
        conflicts = [rel for rel in remote.files if any(d in remote.files for d in parent_dirs(rel))]
        if conflicts:
            raise SyncError(
                "keys under s3://%s/%s are both a file and a directory (e.g. %r): cannot pull them"
                % (self.opts.bucket, self.prefix, conflicts[0])
            )
        mirror = self.opts.mode == "mirror"
        needed_dirs: set[str] = set()
        for rel in list(remote.files) + sorted(remote.markers) + remote.manifest_dirs:
            needed_dirs.update(parent_dirs(rel))
        needed_dirs.update(remote.markers)
        needed_dirs.update(remote.manifest_dirs)
        needed_dirs = {d for d in needed_dirs if not self.excluded(d)}
        plan = self.plan
        plan.temporaries = sorted(temporaries)

        # local entries in the way of a needed directory, directories in the
        # way of a file: mirror replaces them, merge refuses
        blocking = sorted(d for d in needed_dirs if d in local)
        dir_in_way = sorted(rel for rel in remote.files if rel in local_dirs)
        if (blocking or dir_in_way) and not mirror:
            what = blocking[0] if blocking else dir_in_way[0]
            kind = local[what].kind if what in local else "directory"
            raise SyncError(
                "%s exists in %s as a %s where the bucket has %s; "
                "use mode: mirror to replace it, or move it away"
                % (what, self.root, "symlink" if kind == "link" else kind, "a directory" if blocking else "a file")
            )

        self.seen = {rel for rel, lf in local.items() if rel in remote.files and lf.kind == "file"}
        self.progress.set_phase("comparing")
        both = [(local[rel], remote.files[rel]) for rel in sorted(remote.files) if rel in local]
        differs = dict(zip([lf.rel for lf, _ in both], self._compare(both)))
        downloads = spread_over_dirs([obj for rel, obj in sorted(remote.files.items()) if differs.get(rel, True)])
        plan.transfer = [(o.rel, o.size) for o in downloads]
        plan.skip_files = len(remote.files) - len(downloads)
        plan.skip_bytes = sum(o.size for o in remote.files.values()) - sum(o.size for o in downloads)
        if mirror:
            plan.delete = sorted(rel for rel in local if rel not in remote.files)
            plan.delete_bytes = sum(local[rel].size for rel in plan.delete)
            self._check_max_delete()
            kept = keep_dirs | needed_dirs
            for rel, _lf in local.items():
                if rel in remote.files:
                    kept.update(parent_dirs(rel))
            plan.dirs_remove = sorted((d for d in local_dirs if d not in kept), key=lambda d: (-d.count("/"), d))
        remaining_dirs = local_dirs - set(plan.dirs_remove)
        plan.dirs_create = sorted(d for d in needed_dirs if d not in remaining_dirs)
        if not os.path.isdir(self.root):
            plan.dirs_create.insert(0, ".")
        if self.opts.dry_run:
            return

        self.progress.set_phase("preparing")
        for rel in plan.temporaries:
            self._remove_local(rel)
            self.temporaries_removed += 1
        # Deletions first in mirror mode: they clear type conflicts and what
        # they remove is not in the source anyway.
        for rel in plan.delete:
            self._remove_local(rel)
            self.deleted += 1
        for d in plan.dirs_remove:
            self._remove_dir(d)
        for d in plan.dirs_create:
            if d == ".":
                os.makedirs(self.root)
                self.dirs_created += 1
            else:
                self._make_dir(d)
        self.progress.files_total = len(downloads)
        self.progress.bytes_total = sum(o.size for o in downloads)
        self.progress.set_phase("transferring")
        runner = Runner(self.opts.concurrency)
        try:
            for obj in downloads:
                runner.submit(self._download, obj, runner)
            runner.wait()
        finally:
            runner.shutdown()

    def _local_path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def _check_parent(self, rel: str) -> str:
        """The local path for rel after checking that its directory resolves
        inside the destination root (no symlinked directory on the way)."""
        path = self._local_path(rel)
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if parent not in self._dirs_checked:
            real_root = os.path.realpath(self.root)
            real = os.path.realpath(os.path.dirname(path))
            if not (real == real_root or real.startswith(real_root.rstrip("/") + "/")):
                raise SyncError(
                    "refusing to write %s: its directory resolves outside %s (to %s)" % (rel, self.root, real)
                )
            self._dirs_checked.add(parent)
        return path

    def _remove_local(self, rel: str) -> None:
        path = self._check_parent(rel)
        try:
            os.unlink(path)  # a symlink is removed, never followed
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalFileError("cannot delete %s: %s" % (path, exc.strerror or exc))

    def _remove_dir(self, rel: str) -> None:
        path = self._check_parent(rel)
        try:
            os.rmdir(path)
            self.dirs_removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise LocalFileError("cannot remove directory %s: %s" % (path, exc.strerror or exc))
            self.warnings.append("kept directory %s: it is not empty" % path)

    def _make_dir(self, rel: str) -> None:
        path = self._check_parent(rel)
        try:
            os.mkdir(path)
            self.dirs_created += 1
        except FileExistsError:
            if os.path.islink(path) or not os.path.isdir(path):
                raise LocalFileError("cannot create directory %s: something else is in the way" % path)
        except OSError as exc:
            raise LocalFileError("cannot create directory %s: %s" % (path, exc.strerror or exc))

    def _open_tmp(self, rel: str) -> tuple[str, str, int]:
        final = self._check_parent(rel)
        tmp = os.path.join(os.path.dirname(final), tmp_name(os.path.basename(final), self.run_id))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o666)
        except OSError as exc:
            raise LocalFileError("cannot write in %s: %s" % (os.path.dirname(final), exc.strerror or exc))
        return final, tmp, fd

    def _finish_download(self, obj: RemoteObject, final: str, tmp: str, fd: int, sha: str, mtime_ns: int) -> None:
        """Verified content in tmp: set its mtime, rename it over final."""
        if obj.sha256 and sha != obj.sha256:
            raise S3Error(
                "ChecksumMismatch",
                "SHA-256 of the downloaded data is %s, expected %s (%s)"
                % (sha, obj.sha256, self.client.url_for(obj.key)),
                200,
                "GetObject",
            )
        mtime = mtime_ns or obj.mtime_ns or time.time_ns()
        try:
            os.utime(fd, ns=(time.time_ns(), mtime))
            os.close(fd)
        except OSError as exc:
            raise LocalFileError("cannot write %s: %s" % (tmp, exc.strerror or exc))
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise LocalFileError("cannot move %s into place as %s: %s" % (tmp, final, exc.strerror or exc))
        st = os.lstat(final)
        if self.cache:
            self.cache.store(obj.rel, _stat_key(st), sha, obj.etag, time.time_ns())
        with self.stats_lock:
            self.seen.add(obj.rel)
            self.transferred_files += 1
            self.transferred_bytes += obj.size
        self.progress.file_done()

    def _download(self, obj: RemoteObject, runner: Runner) -> None:
        if runner.failed:
            return
        if obj.size > self.opts.part_size:
            _RangedDownload(self, obj).start(runner)
            return
        final, tmp, fd = self._open_tmp(obj.rel)
        try:
            sha, mtime_ns = self.client.retrying(lambda: self._get_into(obj, fd))
            self._finish_download(obj, final, tmp, fd, sha, mtime_ns)
            fd = -1
        finally:
            if fd >= 0:
                _discard(fd, tmp)

    def _get_into(self, obj: RemoteObject, fd: int) -> tuple[str, int]:
        """One GET attempt into fd (from offset 0), hashing as it streams."""
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        resp = self.client.send("GetObject", "GET", obj.key, headers={"if-match": '"%s"' % obj.etag}, stream=True)
        expected = obj.sha256 or resp.getheader("x-amz-meta-sha256", "").lower() or None
        mtime_ns = parse_mtime_header(resp.getheader("x-amz-meta-mtime"))
        h = hashlib.sha256()
        got = self._stream_to(resp, fd, None, obj, h)
        if got != obj.size:
            raise TransientError("%s: got %d bytes, expected %d" % (self.client.url_for(obj.key), got, obj.size))
        sha = h.hexdigest()
        if expected and _is_sha(expected) and sha != expected:
            raise S3Error(
                "ChecksumMismatch",
                "SHA-256 of the downloaded data is %s, expected %s (%s)"
                % (sha, expected, self.client.url_for(obj.key)),
                200,
                "GetObject",
            )
        if expected and not obj.sha256:
            obj.sha256 = expected if _is_sha(expected) else None
        return sha, mtime_ns

    def _stream_to(self, resp: Any, fd: int, offset: Optional[int], obj: RemoteObject, hasher: Any) -> int:
        """Copies a response body to fd (at offset with pwrite, else at the
        current position); returns the byte count."""
        buf = _thread_buffer()
        view = memoryview(buf)
        got = 0
        try:
            while True:
                try:
                    n = resp.readinto(view)
                except (OSError, http.client.HTTPException) as exc:
                    self.client._drop_connection()
                    raise TransientError("GET %s: %s" % (self.client.url_for(obj.key), exc)) from exc
                if not n:
                    break
                chunk = view[:n]
                if hasher is not None:
                    hasher.update(chunk)
                try:
                    if offset is None:
                        _write_all(fd, chunk)
                    else:
                        _pwrite_all(fd, chunk, offset + got)
                except OSError as exc:
                    raise LocalFileError("cannot write below %s: %s" % (self.root, exc.strerror or exc)) from exc
                got += n
                self.progress.add_bytes(n)
        finally:
            if not resp.isclosed():
                resp.close()
                self.client._drop_connection()
        return got

    # -- result

    def result(self) -> dict[str, Any]:
        o, plan = self.opts, self.plan
        seconds = max(time.time() - self.started, 1e-9)
        n = o.list_limit
        plan_doc: dict[str, Any] = {
            ("upload" if o.direction == "push" else "download"): {
                "files": len(plan.transfer),
                "bytes": sum(size for _, size in plan.transfer),
                "first": [rel for rel, _ in sorted(plan.transfer)[:n]],
            },
            "delete": {"files": len(plan.delete), "bytes": plan.delete_bytes, "first": plan.delete[:n]},
            "skip": {"files": plan.skip_files, "bytes": plan.skip_bytes},
        }
        if o.direction == "pull":
            plan_doc["dirs_create"] = {"count": len(plan.dirs_create), "first": plan.dirs_create[:n]}
            plan_doc["dirs_remove"] = {"count": len(plan.dirs_remove), "first": plan.dirs_remove[:n]}
            plan_doc["temporaries"] = {"count": len(plan.temporaries), "first": plan.temporaries[:n]}
        changes = len(plan.transfer) + len(plan.delete)
        if o.direction == "pull":
            changes += len(plan.dirs_create) + len(plan.dirs_remove)
        if o.dry_run:
            changed = changes > 0
        else:
            changed = bool(self.transferred_files + self.deleted + self.dirs_created + self.dirs_removed)
        requests = dict(self.client.requests) if self.client else {}
        return {
            "changed": changed,
            "direction": o.direction,
            "bucket": o.bucket,
            "prefix": self.prefix,
            "path": self.root,
            "mode": o.mode,
            "check_mode": o.dry_run,
            "plan": plan_doc,
            "transferred": {"files": self.transferred_files, "bytes": self.transferred_bytes},
            "skipped": {"files": plan.skip_files, "bytes": plan.skip_bytes},
            "deleted": {"files": self.deleted},
            "dirs_created": self.dirs_created,
            "dirs_removed": self.dirs_removed,
            "temporaries_removed": self.temporaries_removed,
            "multipart_files": self.multipart_files,
            "hashed": {"files": self.hashed_files, "bytes": self.hashed_bytes},
            "manifest_written": self.manifest_written,
            "requests": requests,
            "retries": self.client.retries if self.client else 0,
            "seconds": round(seconds, 3),
            "throughput_bytes_per_second": round(self.transferred_bytes / seconds),
            "throughput": "%s/s" % human_bytes(self.transferred_bytes / seconds),
            "checksum_cache": self.cache.path if self.cache else None,
            "warnings": self.warnings,
        }


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


def spread_over_dirs(objs: list[Any]) -> list[Any]:
    """Biggest first (long transfers start early), then the small files taken
    from each directory in turn: workers creating and renaming files in one
    directory queue on its lock; spread over many, they do not."""
    big = sorted((o for o in objs if o.size > IN_MEMORY_MAX), key=lambda o: -o.size)
    by_dir: dict[str, list[Any]] = {}
    for o in objs:
        if o.size <= IN_MEMORY_MAX:
            by_dir.setdefault(o.rel.rpartition("/")[0], []).append(o)
    queues = list(by_dir.values())
    small = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return big + small


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _discard(fd: int, tmp: str) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.unlink(tmp)
    except OSError:
        pass


class _MultipartUpload:
    """Parts of one large file; the last part to finish completes the upload
    (no worker waits on another, so the pool cannot deadlock), and a failure
    aborts it once no part is in flight."""

    def __init__(
        self,
        sync: Sync,
        lf: LocalFile,
        key: str,
        upload_id: str,
        ranges: list[tuple[int, int]],
        st: os.stat_result,
        sha: str,
        hashed_at: int,
        uploaded: dict,
    ):
        self.sync, self.lf, self.key, self.upload_id = sync, lf, key, upload_id
        self.ranges, self.st, self.sha, self.hashed_at, self.uploaded = ranges, st, sha, hashed_at, uploaded
        self.etags: dict[int, str] = {}
        self.outstanding = len(ranges)
        self.failed = False
        self.lock = threading.Lock()

    def part(self, number: int, runner: Runner) -> None:
        ok = False
        try:
            if not self.failed and not runner.failed:
                offset, length = self.ranges[number - 1]
                resp = self.sync.client.call(
                    "UploadPart",
                    "PUT",
                    self.key,
                    query={"partNumber": str(number), "uploadId": self.upload_id},
                    body=FileBody(self.lf.path, offset, length),
                )
                self.sync.progress.add_bytes(length)
                with self.lock:
                    self.etags[number] = resp.headers.get("etag", "")
                ok = True
        finally:
            with self.lock:
                self.outstanding -= 1
                if not ok:
                    self.failed = True
                last = self.outstanding == 0
            if last:
                if self.failed:
                    self._abort()
                else:
                    self._complete()

    def _complete(self) -> None:
        client = self.sync.client
        try:
            st = os.stat(self.lf.path)
            if _stat_key(st) != _stat_key(self.st):
                raise LocalFileError("%s changed while it was being uploaded; re-run the sync" % self.lf.path)
            body = (
                "<CompleteMultipartUpload>"
                + "".join(
                    "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>" % (n, xml_escape(self.etags[n]))
                    for n in sorted(self.etags)
                )
                + "</CompleteMultipartUpload>"
            ).encode("utf-8")
            resp = client.call(
                "CompleteMultipartUpload",
                "POST",
                self.key,
                query={"uploadId": self.upload_id},
                body=body,
                payload_hash=hashlib.sha256(body).hexdigest(),
            )
            root = parse_xml(resp.data)
            if root.tag == "Error":  # S3 can report failure in a 200
                raise S3Error(
                    root.findtext("Code") or "InternalError",
                    root.findtext("Message") or "",
                    500,
                    "CompleteMultipartUpload",
                )
            etag = (root.findtext("ETag") or "").strip('"')
        except BaseException:
            self._abort()
            raise
        self.sync._uploaded(self.lf, _stat_key(self.st), self.sha, etag, self.uploaded, self.hashed_at)

    def _abort(self) -> None:
        try:
            self.sync.client.call("AbortMultipartUpload", "DELETE", self.key, query={"uploadId": self.upload_id})
        except (S3Error, TransientError):
            pass  # best effort; the original failure is what gets reported


class _RangedDownload:
    """A large object fetched as parallel ranged GETs into one temporary
    file. The SHA-256 is computed in order as the leading ranges complete
    (re-reading them from the page cache), by whichever worker finishes the
    next range, so hashing overlaps the transfer; the one that hashes the
    last range verifies and renames. Memory: one buffer per worker."""

    def __init__(self, sync: Sync, obj: RemoteObject):
        self.sync, self.obj = sync, obj
        self.ranges = sync._part_ranges(obj.size)
        self.done = [False] * len(self.ranges)
        self.next_hash = 0
        self.hashing = False
        self.outstanding = len(self.ranges)
        self.failed = False
        self.lock = threading.Lock()
        self.hasher = hashlib.sha256()
        self.expected: Optional[str] = obj.sha256
        self.mtime_ns = 0
        self.final = self.tmp = ""
        self.fd = -1

    def start(self, runner: Runner) -> None:
        self.final, self.tmp, self.fd = self.sync._open_tmp(self.obj.rel)
        try:
            os.ftruncate(self.fd, self.obj.size)
        except OSError as exc:
            _discard(self.fd, self.tmp)
            raise LocalFileError("cannot write %s: %s" % (self.tmp, exc.strerror or exc))
        with self.sync.stats_lock:
            self.sync.multipart_files += 1
        for i in range(len(self.ranges)):
            runner.submit(self.part, i, runner)

    def part(self, i: int, runner: Runner) -> None:
        ok = False
        try:
            if not self.failed and not runner.failed:
                self.sync.client.retrying(lambda: self._get_range(i))
                ok = True
        finally:
            self._part_done(i, ok)

    def _get_range(self, i: int) -> None:
        offset, length = self.ranges[i]
        client = self.sync.client
        resp = client.send(
            "GetObject",
            "GET",
            self.obj.key,
            headers={"range": "bytes=%d-%d" % (offset, offset + length - 1), "if-match": '"%s"' % self.obj.etag},
            stream=True,
        )
        if i == 0:
            header = (resp.getheader("x-amz-meta-sha256") or "").lower()
            with self.lock:
                if not self.expected and _is_sha(header):
                    self.expected = header
                self.mtime_ns = parse_mtime_header(resp.getheader("x-amz-meta-mtime"))
        got = self.sync._stream_to(resp, self.fd, offset, self.obj, None)
        if got != length:
            raise TransientError(
                "%s: range %d got %d bytes, expected %d" % (client.url_for(self.obj.key), i, got, length)
            )

    def _part_done(self, i: int, ok: bool) -> None:
        with self.lock:
            self.outstanding -= 1
            if not ok:
                self.failed = True
            else:
                self.done[i] = True
            if self.failed:
                if self.outstanding == 0 and not self.hashing:
                    _discard(self.fd, self.tmp)
                return
            if self.hashing:
                return
            self.hashing = True
        finished = False
        while True:
            with self.lock:
                if self.failed:
                    self.hashing = False
                    if self.outstanding == 0:
                        _discard(self.fd, self.tmp)
                    return
                if self.next_hash < len(self.ranges) and self.done[self.next_hash]:
                    idx = self.next_hash
                else:
                    self.hashing = False
                    finished = self.next_hash == len(self.ranges)
                    break
            offset, length = self.ranges[idx]
            try:
                hash_file(self.tmp, offset, length, self.hasher)
            except BaseException:
                with self.lock:
                    self.failed = True
                    self.hashing = False
                    if self.outstanding == 0:
                        _discard(self.fd, self.tmp)
                raise
            with self.lock:
                self.next_hash += 1
        if finished:
            if self.expected and not self.obj.sha256:
                self.obj.sha256 = self.expected
            try:
                self.sync._finish_download(
                    self.obj, self.final, self.tmp, self.fd, self.hasher.hexdigest(), self.mtime_ns
                )
            except BaseException:
                _discard(self.fd, self.tmp)
                raise


# --------------------------------------------------------------------------
# command line (benchmarks, debugging): python reefguide_sync.py push DIR s3://bucket/prefix


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise SyncError("%r is not an s3://bucket/prefix URL" % url)
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="reefguide_sync", description="Sync a directory with s3://bucket/prefix.")
    parser.add_argument("direction", choices=["push", "pull"])
    parser.add_argument("path", help="local directory (or file, for push)")
    parser.add_argument("url", help="s3://bucket/prefix")
    parser.add_argument("--mode", choices=["merge", "mirror"], default="merge")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--part-size", default="16MiB")
    parser.add_argument("--sse", default="AES256", help="AES256, aws:kms or none")
    parser.add_argument("--sse-kms-key-id")
    parser.add_argument("--exclude", action="append", default=[])
    parser.add_argument("--checksum-cache", help="cache file (default under ~/.cache/reefguide-efs)")
    parser.add_argument("--no-checksum-cache", action="store_true")
    parser.add_argument("--rehash", action="store_true")
    parser.add_argument("--progress-file")
    parser.add_argument("--progress-interval", type=float, default=2.0)
    parser.add_argument("--max-delete", type=int)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--region")
    parser.add_argument("--profile")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--max-attempts", type=int, default=10)
    parser.add_argument("--summary", action="store_true", help="one line instead of the JSON result")
    args = parser.parse_args(argv)
    try:
        bucket, prefix = parse_s3_url(args.url)
        opts = SyncOptions(
            direction=args.direction,
            bucket=bucket,
            prefix=prefix,
            path=args.path,
            mode=args.mode,
            concurrency=args.concurrency,
            part_size=parse_size(args.part_size),
            sse=None if args.sse.lower() == "none" else args.sse,
            sse_kms_key_id=args.sse_kms_key_id,
            exclude=args.exclude,
            checksum_cache=args.checksum_cache,
            use_checksum_cache=not args.no_checksum_cache,
            rehash=args.rehash,
            progress_file=args.progress_file,
            progress_interval=args.progress_interval,
            max_delete=args.max_delete,
            dry_run=args.dry_run,
            region=args.region,
            profile=args.profile,
            endpoint_url=args.endpoint_url,
            max_attempts=args.max_attempts,
        )
        result = Sync(opts).run()
    except (SyncError, UnsafePathError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - AWS errors, described
        print("error: %s" % describe_error(exc, "%s %s" % (args.direction, args.url)), file=sys.stderr)
        return 1
    if args.summary:
        print(summary(result))
    else:
        json.dump(result, sys.stdout, indent=1, sort_keys=True)
        print()
    return 0


def summary(result: dict[str, Any]) -> str:
    verb = "would transfer" if result["check_mode"] else "transferred"
    plan_key = "upload" if result["direction"] == "push" else "download"
    files = result["plan"][plan_key]["files"] if result["check_mode"] else result["transferred"]["files"]
    size = result["plan"][plan_key]["bytes"] if result["check_mode"] else result["transferred"]["bytes"]
    return "%s: %s %d files (%s), %d unchanged, %d deleted, in %.2f s (%s)" % (
        result["direction"],
        verb,
        files,
        human_bytes(size),
        result["skipped"]["files"],
        result["plan"]["delete"]["files"] if result["check_mode"] else result["deleted"]["files"],
        result["seconds"],
        result["throughput"],
    )


if __name__ == "__main__":
    sys.exit(main())
