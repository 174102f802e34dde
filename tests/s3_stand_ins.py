"""Loopback HTTP servers for the S3 engine's quick tests (tests/test_s3_retries.py, test_s3_proxy.py):
just enough S3 for one listing, each answering as a test needs, started and shut down around a test."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

EMPTY_LISTING = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><Prefix></Prefix>'
                 b"<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>")


class Quiet(http.server.BaseHTTPRequestHandler):
    """A handler that logs nothing and answers in one call."""

    def reply(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type, tls: Optional[ssl.SSLContext] = None, **state: Any) -> Iterator[http.server.HTTPServer]:
    """A threaded server of handler on 127.0.0.1 (over TLS with tls), state set as its attributes."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in state.items():
        setattr(server, name, value)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url(server: http.server.HTTPServer, scheme: str = "http") -> str:
    return "%s://127.0.0.1:%d" % (scheme, server.server_address[1])
