# How the S3 engine reaches S3: which host a bucket's requests go to (AWS's own endpoints,
# virtual-hosted or path-style, FIPS and dual-stack, or a custom endpoint), the TLS context (the
# CA bundle), and the CONNECT tunnel through HTTPS_PROXY. The same choices as botocore's, so that
# the transfers reach what the boto3 calls reach (tests/test_s3_settings.py, test_s3_proxy.py). And
# the wait for S3's go-ahead before a large body (Expect: 100-continue, tests/test_s3_continue.py).

from __future__ import annotations

import base64
import http.client
import os
import re
import select
import ssl
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote, unquote, urlsplit

from ansible.module_utils.reefguide.s3_settings import S3Settings
from ansible.module_utils.reefguide.sync_common import SyncError


def dns_compatible(bucket: str) -> bool:
    return bool(re.match(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", bucket))


@dataclass
class Endpoint:
    scheme: str
    host: str  # where to connect
    port: int
    host_header: str  # what is signed and sent as Host
    base_path: str  # "" (virtual-hosted) or "/<bucket>" (path-style)


def endpoint_for(bucket: str, region: str, endpoint_url: Optional[str], settings: S3Settings) -> Endpoint:
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        scheme, host, port = parts.scheme or "https", parts.hostname or "", parts.port
        virtual = False
    else:
        china = region.startswith("cn-")
        if settings.fips and china:
            raise SyncError("use_fips_endpoint is set, but S3 has no FIPS endpoint in %s (China regions have none): "
                            "unset it (AWS_USE_FIPS_ENDPOINT, or use_fips_endpoint in the AWS config)" % region)
        name = ("s3-fips" if settings.fips else "s3") + (".dualstack" if settings.dualstack else "")
        suffix = "amazonaws.com.cn" if china else "amazonaws.com"
        scheme, host, port = "https", "%s.%s.%s" % (name, region, suffix), None
        virtual = dns_compatible(bucket)
        if virtual:
            host = "%s.%s" % (bucket, host)
    shown = "[%s]" % host if ":" in host else host
    return Endpoint(scheme, host, port or (443 if scheme == "https" else 80),
                    shown if port is None else "%s:%d" % (shown, port),
                    "" if virtual else "/" + quote(bucket, safe=""))


def ssl_context(ca_bundle: Optional[str]) -> ssl.SSLContext:
    """TLS that trusts ca_bundle (AWS_CA_BUNDLE or the config's ca_bundle), else botocore's CA file."""
    cafile = ca_bundle
    if cafile and not os.path.isfile(cafile):
        raise SyncError("the CA bundle %s (AWS_CA_BUNDLE, or ca_bundle in the AWS config): no such file; point it at "
                        "the PEM file of the CA that signs your S3 endpoint's or proxy's certificates, or unset it"
                        % cafile)
    if not cafile:
        try:
            from botocore.httpsession import get_cert_path

            cafile = get_cert_path(True)
        except Exception:  # pragma: no cover - very old botocore
            cafile = None
    return ssl.create_default_context(cafile=cafile if isinstance(cafile, str) else None)


def tunnel(proxy: str, host: str, port: int, timeout: float,
           context: ssl.SSLContext) -> tuple[http.client.HTTPSConnection, str]:
    """A CONNECT tunnel through HTTPS_PROXY to host:port, as botocore makes it: the proxy's user and
    password (percent-encoded in its URL) sent as Proxy-Authorization, port 80 when the URL has none;
    and the proxy as the messages may show it (never the password)."""
    p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    shown = "%s://%s%s" % (p.scheme, p.hostname, ":%d" % p.port if p.port else "")
    if p.scheme != "http" or not p.hostname:
        raise SyncError("HTTPS_PROXY %s: this engine reaches a proxy over plain HTTP (a CONNECT, then TLS to S3 "
                        "inside the tunnel), as most proxies are reached; give the proxy's http:// address"
                        % (shown if p.hostname else repr(proxy)))
    headers = {}
    if p.username is not None:
        pair = "%s:%s" % (unquote(p.username), unquote(p.password or ""))
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    conn = http.client.HTTPSConnection(p.hostname, p.port or 80, timeout=timeout, context=context)
    conn.set_tunnel(host, port, headers=headers)
    return conn, shown


# A body this large goes after S3's "100 Continue": S3 refuses a request it will not take (expired
# token, access denied, another region) before reading the body, and a sender that sent the body
# anyway would see a broken pipe instead of S3's reason. A smaller body fits in the socket's buffers.
EXPECT_CONTINUE_FROM = 1024 * 1024
CONTINUE_WAIT = 1.0  # seconds without an answer after which the body goes anyway, as botocore does


EarlyAnswer = tuple[int, dict[str, str], bytes]


def await_continue(conn: http.client.HTTPConnection, wait: float = CONTINUE_WAIT) -> Optional[EarlyAnswer]:
    """After the headers of a request sent with Expect: 100-continue: None once the server says
    100 Continue (or nothing within wait seconds), else its final answer (status, headers with
    lower-case names, body), given instead of reading the body. Reads no byte past that answer,
    so http.client reads what follows the body as ever."""
    sock: Any = conn.sock
    if not (getattr(sock, "pending", None) and sock.pending()):  # TLS may hold a decrypted answer
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            return None
    fp = sock.makefile("rb", buffering=0)  # unbuffered: a byte at a time, nothing read ahead
    try:
        while True:
            line = fp.readline(65537)
            if not line:
                raise http.client.RemoteDisconnected("the server closed the connection without an answer")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise http.client.BadStatusLine(line.decode("latin-1").strip())
            status = int(parts[1])
            headers = {k.lower(): v for k, v in http.client.parse_headers(fp).items()}
            if status == 100:
                return None
            if status > 100:
                break  # another 1xx is skipped, as http.client does
        length = int(headers.get("content-length") or 0)
        data = b""
        while len(data) < length:
            chunk = fp.read(length - len(data))
            if not chunk:
                break
            data += chunk
        return status, headers, data
    finally:
        fp.close()
