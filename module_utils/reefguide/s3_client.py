# The S3 wire client: just enough S3 for a sync (PUT, GET, UploadPart,
# listing, deletes) over http.client, with its own SigV4 signer.
#
# Why not botocore: speed on many small files is decided by client CPU per
# request (docs/architecture.md, "S3 engine"). botocore spends 1-2 ms of CPU
# per call (events, endpoint rules, parsing), the GIL serialises that, and
# 5,000 small PUTs take ~11 s on two cores where s5cmd needs ~5.6 s. This
# client signs a request in ~0.3 ms and keeps one keep-alive connection per
# worker thread. botocore is still what finds the credentials (profiles, SSO,
# the instance role), and its error codes and hints are reused through
# reefguide.aws.describe_error(). Nothing here depends on the boto3 version,
# so the pull on the instance (python3-boto3 1.26) runs the same code.

from __future__ import annotations

import base64
import calendar
import email.utils
import hashlib
import hmac
import http.client
import os
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import quote, unquote_plus
from urllib.request import getproxies, proxy_bypass
from xml.sax.saxutils import escape as xml_escape

from ansible.module_utils.reefguide.interrupt import Interrupted
from ansible.module_utils.reefguide.s3_connect import (
    EXPECT_CONTINUE_FROM,
    await_continue,
    endpoint_for,
    ssl_context,
    tunnel,
)
from ansible.module_utils.reefguide.s3_errors import RETRY_CODES, RetryBudget, S3Error, TransientError, back_off
from ansible.module_utils.reefguide.s3_settings import S3Settings, environment_settings
from ansible.module_utils.reefguide.sync_common import LocalFileError, SyncError, thread_buffer

UNSIGNED = "UNSIGNED-PAYLOAD"
# A PUT whose payload hash is signed carries the same SHA-256 as its checksum: S3 checks the body
# against it and keeps it with the object (or part), as a bucket with Object Lock requires.
CHECKSUM_HEADER = "x-amz-checksum-sha256"
CLEANUP_ATTEMPTS = 2  # per request, once interrupted: the clean-up must end in seconds


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    data: bytes = b""


@dataclass
class FileBody:
    """A byte range of a local file sent as a request body, re-read on retry. sent, if given,
    hears of the bytes as the kernel takes them (progress within a part on a slow uplink), and
    of minus what an attempt had sent when it fails, so that a retry does not count them twice."""

    path: str
    offset: int
    length: int
    sent: Optional[Callable[[int], None]] = None


def parse_xml(data: bytes) -> ET.Element:
    """An S3 XML document with namespaces dropped: servers differ on
    whether they send S3's namespace at all."""
    root = ET.fromstring(data)
    for el in root.iter():
        if el.tag[:1] == "{":
            el.tag = el.tag.split("}", 1)[1]
    return root


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
        settings: Optional[S3Settings] = None,
    ):
        self.bucket = bucket
        # FIPS and dual-stack endpoints, the CA bundle (s3_settings.py); default: the environment's
        self.settings = settings if settings is not None else environment_settings()
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
        self.proxy_shown = ""  # the tunnel's proxy, without its password: for the messages
        # seconds to add to this machine's clock when signing: S3's time minus ours, learnt from a
        # RequestTimeTooSkewed (a clock 15 min off, common on laptops after sleep and on VMs)
        self.clock_offset = 0.0
        self.stats_lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.retries = 0
        # Set by cancel(): no new request starts, except in a cleanup() block.
        self.cancelled = ""
        self._cancel_event = threading.Event()  # wakes the retries' back-off sleeps
        self._conns: set[http.client.HTTPConnection] = set()
        self._set_endpoint(region or "us-east-1")

    # -- endpoint and connections

    def _set_endpoint(self, region: str) -> None:
        self.region = region
        e = endpoint_for(self.bucket, region, self.endpoint_url, self.settings)
        self.scheme, self.host, self.port, self.host_header, self.base_path = (
            e.scheme, e.host, e.port, e.host_header, e.base_path)
        self._generation += 1

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl_context(self.settings.ca_bundle)
        return self._ssl

    def _new_connection(self) -> http.client.HTTPConnection:
        if self.scheme != "https":
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        proxy = getproxies().get("https")
        if proxy and not proxy_bypass(self.host):
            conn, self.proxy_shown = tunnel(proxy, self.host, self.port, self.timeout, self._ssl_context())
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
            with self.stats_lock:
                self._conns.add(conn)
        return conn

    def drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            with self.stats_lock:
                self._conns.discard(conn)
        self._local.conn = None

    # -- interruption

    def cancel(self, signame: str) -> None:
        """From the interrupted main thread: no request starts any more, and
        the ones in flight are cut (their sockets shut down, which wakes the
        worker blocked on them with an error that is then not retried)."""
        self.cancelled = signame
        self._cancel_event.set()
        with self.stats_lock:
            conns = list(self._conns)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its worker

    @contextmanager
    def cleanup(self) -> Iterator[None]:
        """Requests this thread makes in the block run even after cancel()
        (aborting multipart uploads), with at most CLEANUP_ATTEMPTS attempts."""
        self._local.cleanup = True
        try:
            yield
        finally:
            self._local.cleanup = False

    def _check_cancelled(self) -> None:
        if self.cancelled and not getattr(self._local, "cleanup", False):
            raise Interrupted(self.cancelled)

    def _attempts(self) -> int:
        return min(self.max_attempts, CLEANUP_ATTEMPTS) if self.cancelled else self.max_attempts

    def close(self) -> None:
        self.drop_connection()

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
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + self.clock_offset if now is None else now))
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
        Raises S3Error for an error response, TransientError for network trouble,
        Interrupted once the run is cancelled."""
        if not (isinstance(body, FileBody) and body.sent):
            return self._send(op, method, key, query, headers, body, payload_hash, stream, None)
        report = body.sent
        counted = [0]

        def note(n: int) -> None:
            counted[0] += n
            report(n)

        try:
            return self._send(op, method, key, query, headers, body, payload_hash, stream, note)
        except BaseException:
            report(-counted[0])  # this attempt's bytes did not arrive
            raise

    def _send(self, op: str, method: str, key: Optional[str], query: Optional[dict[str, str]],
              headers: Optional[dict[str, str]], body: Any, payload_hash: str, stream: bool,
              note: Optional[Callable[[int], None]]) -> Any:
        self._check_cancelled()
        self._count(op)
        path = self.path_for(key)
        qs = canonical_query(query)
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if body is not None:
            hdrs["content-length"] = str(body.length if isinstance(body, FileBody) else len(body))
        elif method in ("PUT", "POST"):
            hdrs["content-length"] = "0"
        if method == "PUT" and body is not None and payload_hash != UNSIGNED:
            hdrs[CHECKSUM_HEADER] = checksum_b64(bytes.fromhex(payload_hash))
        self.sign(method, path, qs, hdrs, payload_hash)
        conn = self._connection()
        try:
            conn.putrequest(method, path + ("?" + qs if qs else ""), skip_host=True, skip_accept_encoding=True)
            for name, value in hdrs.items():
                conn.putheader(name, value)
            expect = isinstance(body, FileBody) and body.length >= EXPECT_CONTINUE_FROM
            if expect:
                conn.putheader("expect", "100-continue")  # unsigned, as botocore leaves it
            conn.endheaders()
            early = await_continue(conn) if expect else None
            if early:  # refused before the body went: S3's own reason, not a broken pipe
                self.drop_connection()
                raise self._error(op, early[0], early[1], early[2], key)
            if isinstance(body, FileBody):
                self._send_file(conn, body, note)
            elif body:
                conn.send(body)
            resp = conn.getresponse()
            status = resp.status
            if stream and 200 <= status < 300:
                return resp
            data = resp.read()
        except LocalFileError:
            self.drop_connection()
            raise
        except ssl.SSLCertVerificationError as exc:
            self.drop_connection()
            raise SyncError(
                "the TLS certificate of %s is not trusted (%s); if a proxy or private endpoint "
                "re-signs traffic, point AWS_CA_BUNDLE at its CA certificate" % (self.host, exc.verify_message or exc)
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            self.drop_connection()
            refused = re.match(r"Tunnel connection failed: (4\d\d)\b", str(exc))
            if refused:  # the proxy's own answer to the CONNECT: asking again changes nothing
                raise SyncError("the proxy %s refused the tunnel to %s: %s; %s" % (
                    self.proxy_shown or "(HTTPS_PROXY)", self.host, str(exc).split(": ", 1)[1],
                    "give its user and password in HTTPS_PROXY (http://USER:PASSWORD@HOST:PORT, percent-encoded)"
                    if refused.group(1) == "407" else "ask its administrator to allow this host")) from exc
            raise TransientError("%s %s: %s" % (op, self.url_for(key), exc or type(exc).__name__)) from exc
        rheaders = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self.drop_connection()
        if status >= 300:
            raise self._error(op, status, rheaders, data, key)
        return Response(status, rheaders, data)

    def _send_file(self, conn: http.client.HTTPConnection, body: FileBody,
                   note: Optional[Callable[[int], None]]) -> None:
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
                    if note:
                        note(n)
                return
            buf = thread_buffer()
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
                if note:
                    note(n)

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
        if code == "RequestTimeTooSkewed":
            self._learn_clock(data, headers)
        where = self.url_for(key)
        return S3Error(code, "%s (%s, HTTP %d)" % (message or code, where, status), status, op, headers)

    def _learn_clock(self, data: bytes, headers: dict[str, str]) -> None:
        """S3's time, from the error's ServerTime or the answer's Date: the retry is signed with it,
        as botocore corrects its clock."""
        server = None
        try:
            text = ET.fromstring(data).findtext("ServerTime") if data else None
            if text:
                server = calendar.timegm(time.strptime(text.split(".")[0].rstrip("Z"), "%Y-%m-%dT%H:%M:%S"))
        except (ET.ParseError, ValueError):
            server = None
        if server is None and headers.get("date"):
            try:
                server = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
            except (TypeError, ValueError):
                server = None
        if server is not None:
            self.clock_offset = server - time.time()

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
                self._check_cancelled()  # a cut request is not retried
                if self._follow_region(exc):
                    continue
                if not self.retriable(exc) or attempt >= self._attempts() or not self.budget.take():
                    raise
                with self.stats_lock:
                    self.retries += 1
                self._cancel_event.wait(back_off(exc, attempt))

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

    def uploads_of(self, key: str) -> list[tuple[str, str]]:
        """(upload id, Initiated text) of the incomplete multipart uploads of
        exactly this key (its first 1,000: one key has a handful at most)."""
        root = parse_xml(self.call("ListMultipartUploads", "GET", None, query={"uploads": "", "prefix": key}).data)
        return [
            (item.findtext("UploadId") or "", item.findtext("Initiated") or "")
            for item in root.iter("Upload")
            if item.findtext("Key") == key
        ]

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
            self._delete_batch(plain[i : i + 1000])

    def _delete_batch(self, batch: list[str]) -> None:
        """One DeleteObjects of up to 1000 keys, retried as any call is (attempts, budget, back-off). S3 can
        fail keys inside its 200: the keys failed with a transient error (InternalError, SlowDown, ...) go
        again, alone; any other per-key error is raised at once, naming its key."""
        pending = list(batch)

        def once() -> None:
            nonlocal pending
            body = (
                "<Delete><Quiet>true</Quiet>"
                + "".join("<Object><Key>%s</Key></Object>" % xml_escape(k) for k in pending)
                + "</Delete>"
            ).encode("utf-8")
            resp = self.send("DeleteObjects", "POST", None, query={"delete": ""},
                             headers={"content-md5": _md5_b64(body), "content-type": "application/xml"},
                             body=body, payload_hash=hashlib.sha256(body).hexdigest())
            failed = [(e.findtext("Code") or "DeleteFailed", e.findtext("Key") or "", e.findtext("Message") or "")
                      for e in (parse_xml(resp.data).iter("Error") if resp.data else ())]
            if not failed:
                return
            lasting = [f for f in failed if f[0] not in RETRY_CODES]
            code, key, message = (lasting or failed)[0]
            if not lasting:
                pending = [k for _, k, _ in failed]  # sent again by retrying(), as a 500 is
            raise S3Error(code, "%s (%s)" % (message, self.url_for(key)), 200 if lasting else 500, "DeleteObjects")

        self.retrying(once)


def checksum_b64(digest: bytes) -> str:
    """A SHA-256 digest as S3's checksum headers and XML carry it."""
    return base64.b64encode(digest).decode("ascii")


def _md5_b64(data: bytes) -> str:

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
