"""The S3 engine behind a corporate proxy (issue 12): HTTPS_PROXY=http://user:password@host:port
gives a CONNECT tunnel that carries the proxy's credentials (Proxy-Authorization, as botocore sends
them), TLS to S3 inside it (checked against AWS_CA_BUNDLE); a proxy that refuses (407 without or
with wrong credentials, 403) is said so at once, not retried ten times as "Tunnel connection
failed"; a proxy URL without a port means port 80, as botocore (urllib3) takes it; an https://
proxy, which the engine cannot reach, is refused before any connection with a message that says
what to give instead. A TLS S3 stand-in and an authenticating proxy run on loopback."""

from __future__ import annotations

import base64
import select
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from ansible.module_utils.reefguide.s3_client import S3Client
from ansible.module_utils.reefguide.sync_common import SyncError
from botocore.credentials import Credentials
from s3_stand_ins import EMPTY_LISTING, Quiet, serving, url

USER, PASSWORD = "us@er", "p:ss w%rd"  # characters a proxy URL must percent-encode
CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


class S3StandIn(Quiet):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.reply(200, EMPTY_LISTING)


class Proxy(Quiet):
    """CONNECT only, with Basic authentication when the server has credentials."""

    def do_CONNECT(self) -> None:  # noqa: N802
        self.server.seen.append((self.path, self.headers.get("Proxy-Authorization")))  # type: ignore[attr-defined]
        wanted = self.server.wanted  # type: ignore[attr-defined]
        if wanted and self.headers.get("Proxy-Authorization") != wanted:
            self.send_response(407, "Proxy Authentication Required")
            self.send_header("Proxy-Authenticate", 'Basic realm="corp"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        ends = [self.connection, upstream]
        while True:
            ready, _, _ = select.select(ends, [], [], 5)
            if not ready:
                break
            for end in ready:
                data = end.recv(65536)
                if not data:
                    upstream.close()
                    return
                (upstream if end is self.connection else self.connection).sendall(data)


@pytest.fixture()
def tls_s3(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """(endpoint URL, its CA certificate, the paths it was asked) of a TLS S3 stand-in on loopback."""
    cert, key = tmp_path / "s3.pem", tmp_path / "s3.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    with serving(S3StandIn, tls=context, paths=[]) as server:
        yield url(server, "https"), cert, server.paths  # type: ignore[attr-defined]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def use_proxy(monkeypatch: pytest.MonkeyPatch, url: str, ca: Optional[Path]) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", url)
    if ca:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))


@pytest.fixture()
def proxy() -> Iterator[Any]:
    """An authenticating CONNECT proxy on loopback; .seen: (target, Proxy-Authorization) of each CONNECT."""
    with serving(Proxy, seen=[], wanted=basic(USER, PASSWORD)) as server:
        yield server


def test_the_tunnel_carries_the_proxys_credentials_and_a_refusal_is_said_at_once(
        tls_s3: tuple[str, Path, list[str]], proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, ca, asked = tls_s3
    server, port = proxy, proxy.server_address[1]
    encoded = "us%40er:p%3Ass%20w%25rd"
    use_proxy(monkeypatch, "http://%s@127.0.0.1:%d" % (encoded, port), ca)
    assert list(S3Client("b", CREDS, "ap-southeast-2", endpoint).list_objects("data/")) == []
    assert server.seen == [("127.0.0.1:%s" % endpoint.rsplit(":", 1)[1], basic(USER, PASSWORD))]  # type: ignore
    assert len(asked) == 1 and asked[0].startswith("/b?")  # the request went through the tunnel, over TLS

    for proxy_url in ("http://127.0.0.1:%d" % port, "http://us%%40er:wrong@127.0.0.1:%d" % port):
        server.seen.clear()
        use_proxy(monkeypatch, proxy_url, ca)
        with pytest.raises(SyncError) as refused:
            list(S3Client("b", CREDS, "ap-southeast-2", endpoint).list_objects("data/"))
        assert len(server.seen) == 1  # type: ignore[attr-defined]  # asked once: a 407 is not transient
        message = str(refused.value)
        assert ("the proxy http://127.0.0.1:%d refused the tunnel to 127.0.0.1: 407 Proxy Authentication Required; "
                "give its user and password in HTTPS_PROXY" % port) in message, message
        assert "wrong" not in message  # never the password


def test_a_proxy_without_a_port_is_port_80_and_an_https_proxy_is_refused_before_any_connection(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_proxy(monkeypatch, "http://proxy.corp.example", None)
    conn = S3Client("reefguide-transfer", CREDS, "ap-southeast-2")._new_connection()
    assert (conn.host, conn.port) == ("proxy.corp.example", 80)
    assert conn._tunnel_host == "reefguide-transfer.s3.ap-southeast-2.amazonaws.com"  # type: ignore[attr-defined]
    use_proxy(monkeypatch, "https://user:secret@proxy.corp.example:3129", None)
    with pytest.raises(SyncError, match=r"HTTPS_PROXY https://proxy\.corp\.example:3129: .* give the proxy's "
                                        r"http:// address") as refused:
        S3Client("reefguide-transfer", CREDS, "ap-southeast-2")._new_connection()
    assert "secret" not in str(refused.value)


def test_a_ca_bundle_that_is_not_there_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_proxy(monkeypatch, "http://proxy.corp.example:3128", tmp_path / "corp-ca.pem")
    with pytest.raises(SyncError, match=r"the CA bundle .*corp-ca\.pem \(AWS_CA_BUNDLE, or ca_bundle in the "
                                        r"AWS config\): no such file"):
        S3Client("reefguide-transfer", CREDS, "ap-southeast-2")._new_connection()
