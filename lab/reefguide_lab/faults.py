"""faults: a flaky S3 in front of the lab's moto server.

An HTTP/1.1 proxy on a loopback port that forwards every request to moto
unchanged (keep-alive; bodies streamed, Content-Length or chunked; headers
and signatures intact) and answers a configured share of the S3 requests
with a fault instead of forwarding them:

    500      HTTP 500 InternalError (S3's XML error body)
    503      HTTP 503 SlowDown (S3's XML error body)
    reset    the connection is reset (SO_LINGER 0) before any response
    stall    the request is held for stall_seconds, then the connection is reset
    expired  (only when asked for) HTTP 400 ExpiredToken: the caller's session token has expired
    drop     (only when asked for) the request IS forwarded and applied, its response is lost:
             the connection is reset instead; this tests that a retry is safe


A request is an S3 request when its SigV4 credential scope names the service
s3: `Authorization: AWS4-HMAC-SHA256 Credential=KEY/DAY/REGION/s3/aws4_request`
or, for a presigned URL, `X-Amz-Credential=...` in the query. Everything else
(CloudFormation, EC2, EFS, STS) is passed through and never faulted. A faulted
request never reaches moto: a fault costs a retry, it never applies a request
twice (except `drop`, which is there to test exactly that).

Which requests fail is drawn from a seeded random generator (one draw per
eligible request, in arrival order), so a single-threaded client sees the same
faults on every run with the same seed. Counters say how many requests went
through and how many faults of each kind were injected.

Control, on the proxy itself (unsigned requests only, so no S3 key is shadowed):

    GET  /lab/faults         {"config": {...}, "counters": {...}}
    POST /lab/faults         JSON, every field optional:
         {"rate": 0.1, "kinds": ["500", "503", "reset", "stall"], "stall_seconds": 2,
          "seed": 1, "match": "^GET /bucket/prefix/", "presigned": true,
          "max_faults": null, "reset_counters": true, "release_stalls": true}

`match` is a regular expression searched in "METHOD /path" (no query): only
matching S3 requests are faulted. `presigned: false` spares presigned-URL
requests (the aws_ssm connection plugin's module transfers, fetched with curl).
`max_faults` stops injecting after that many faults since the counters were
last reset (null: no limit). Setting
`seed` restarts the generator. `latency_seconds` holds every S3 request that
`match` and `presigned` let through for that long before it is forwarded (or
faulted), as a far region or a slow link would: a transfer of a few hundred
files then lasts seconds without the CPU of thousands. `release_stalls` ends
every stall now held (its connection is reset) and lets later stalls end at
once, until `stall_seconds` is set again: a test holds a request "until the
thing it waits for has happened" rather than for a guessed number of seconds.

Run by `labctl up --s3-faults RATE`; stopped by `labctl down` (by pid).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

KINDS = ("500", "503", "reset", "stall", "drop", "expired")
DEFAULT_KINDS = ("500", "503", "reset", "stall")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
              "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect"}
CHUNK = 256 * 1024
S3_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/s3/aws4_request")
ERRORS = {
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "expired": (400, "Bad Request", "ExpiredToken", "The provided token has expired."),
}


class Faults:
    """The configuration, the random generator and the counters, shared by all threads."""

    def __init__(self, rate: float = 0.0, kinds: Optional[list[str]] = None, stall_seconds: float = 2.0,
                 seed: int = 0) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.released = threading.Event()  # stalls end now (release_stalls), until stall_seconds is set again
        self.config: dict[str, Any] = {"rate": 0.0, "kinds": list(KINDS), "stall_seconds": 2.0, "seed": 0,
                                       "match": None, "presigned": True, "max_faults": None,
                                       "latency_seconds": 0.0}
        self.config["kinds"] = list(DEFAULT_KINDS)
        self.rng = random.Random(0)
        self.reset_counters()
        self.configure({"rate": rate, "kinds": kinds or list(DEFAULT_KINDS), "stall_seconds": stall_seconds,
                        "seed": seed})

    def reset_counters(self) -> None:
        self.counters: dict[str, Any] = {"requests": 0, "s3_requests": 0, "forwarded": 0, "faults": 0,
                                         "by_kind": {k: 0 for k in KINDS}, "upstream_errors": 0, "delayed": 0}

    def configure(self, doc: dict[str, Any]) -> None:
        """Validates first, then applies every field given (ValueError: nothing applied)."""
        new = dict(self.config)
        if "rate" in doc:
            rate = float(doc["rate"])
            if not 0.0 <= rate <= 1.0:
                raise ValueError("rate must be between 0 and 1, got %r" % doc["rate"])
            new["rate"] = rate
        if "kinds" in doc:
            kinds = doc["kinds"]
            if isinstance(kinds, str):
                kinds = [k for k in kinds.split(",") if k]
            bad = [k for k in kinds if k not in KINDS]
            if bad or not kinds:
                raise ValueError("kinds must be a non-empty list of %s, got %r" % (", ".join(KINDS), doc["kinds"]))
            new["kinds"] = list(kinds)
        if "stall_seconds" in doc:
            stall = float(doc["stall_seconds"])
            if stall < 0:
                raise ValueError("stall_seconds must be >= 0")
            new["stall_seconds"] = stall
        if "latency_seconds" in doc:
            latency = float(doc["latency_seconds"])
            if latency < 0:
                raise ValueError("latency_seconds must be >= 0")
            new["latency_seconds"] = latency
        if "match" in doc:
            if doc["match"]:
                re.compile(doc["match"])
            new["match"] = doc["match"] or None
        if "presigned" in doc:
            new["presigned"] = bool(doc["presigned"])
        if "max_faults" in doc:
            new["max_faults"] = None if doc["max_faults"] is None else int(doc["max_faults"])
        if "seed" in doc:
            new["seed"] = int(doc["seed"])
        with self.lock:
            self.config = new
            if "seed" in doc:
                self.rng = random.Random(new["seed"])
            if doc.get("reset_counters"):
                self.reset_counters()
            if "stall_seconds" in doc:
                self.released.clear()
            if doc.get("release_stalls"):
                self.released.set()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"config": dict(self.config), "counters": json.loads(json.dumps(self.counters))}

    def _applies(self, method: str, path: str, presigned: bool) -> bool:
        """Whether `match` and `presigned` let this S3 request be faulted or held (under self.lock)."""
        c = self.config
        if presigned and not c["presigned"]:
            return False
        return not c["match"] or re.search(c["match"], "%s %s" % (method, path)) is not None

    def decide(self, method: str, path: str, s3: bool, presigned: bool) -> Optional[str]:
        """The fault for this request, or None to forward it."""
        with self.lock:
            c = self.config
            self.counters["requests"] += 1
            if not s3:
                return None
            self.counters["s3_requests"] += 1
            if c["rate"] <= 0 or not self._applies(method, path, presigned):
                return None
            if c["max_faults"] is not None and self.counters["faults"] >= c["max_faults"]:
                return None
            if self.rng.random() >= c["rate"]:
                return None
            kind = self.rng.choice(c["kinds"])
            self.counters["faults"] += 1
            self.counters["by_kind"][kind] += 1
            return kind

    def latency(self, method: str, path: str, s3: bool, presigned: bool) -> float:
        """How long to hold this request before it goes on (0: not at all)."""
        with self.lock:
            c = self.config
            if not s3 or c["latency_seconds"] <= 0 or not self._applies(method, path, presigned):
                return 0.0
            self.counters["delayed"] += 1
            return c["latency_seconds"]

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1


def s3_identity(headers: Any, query: str) -> tuple[bool, bool]:
    """(is an S3 request, is a presigned-URL request)."""
    if S3_SCOPE.search(headers.get("Authorization", "")):
        return True, False
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name.lower() == "x-amz-credential":
            return bool(re.search(r"/s3/aws4_request$", unquote(value))), True
    return False, False


class UpstreamClosed(Exception):
    """The kept-alive connection to moto was closed before it answered."""

    def __init__(self, body_sent: bool) -> None:
        super().__init__("upstream closed a kept-alive connection")
        self.body_sent = body_sent


def make_handler(faults: Faults, upstream_host: str, upstream_port: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 300  # an idle kept-alive client connection is dropped after this
        upstream: Optional[http.client.HTTPConnection] = None
        upstream_used = False

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the log is for faults and errors
            pass

        def handle_expect_100(self) -> bool:
            # Decided per request: "100 Continue" only for a request that is forwarded.
            return True

        def handle_one_request(self) -> None:
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or len(self.raw_requestline) > 65536:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                self.dispatch()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.close_connection = True
                if not isinstance(exc, (ConnectionError, TimeoutError)):
                    sys.stderr.write("faults: %s %s: %r\n" % (self.command, self.path, exc))

        def finish(self) -> None:
            try:
                super().finish()
            except OSError:
                pass
            if self.upstream is not None:
                self.upstream.close()

        # -- one request ---------------------------------------------------------
        def dispatch(self) -> None:
            url = urlsplit(self.path)
            s3, presigned = s3_identity(self.headers, url.query)
            if not s3 and not self.headers.get("Authorization") and url.path in ("/lab/faults", "/lab/status"):
                return self.control()
            held = faults.latency(self.command, url.path, s3, presigned)
            if held:
                faults.stop.wait(held)
            kind = faults.decide(self.command, url.path, s3, presigned)
            expect = self.headers.get("Expect", "").lower() == "100-continue"
            if kind is None:
                return self.forward(expect)
            sys.stderr.write("faults: %s %s %s\n" % (kind, self.command, url.path))
            if kind == "reset":
                return self.reset()
            if kind == "stall":
                faults.released.wait(faults.config["stall_seconds"])
                return self.reset()
            if kind == "drop":
                return self.forward(expect, drop=True)
            if expect:
                self.close_connection = True  # the body was never asked for: it cannot follow
            else:
                for _ in self.body():  # keep the connection in step: the body is read, dropped
                    pass
            status, reason, code, message = ERRORS[kind]
            self.error(status, reason, code, message)

        def body(self) -> Iterator[bytes]:
            """The request body as it arrives (Content-Length or chunked)."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while True:
                    line = self.rfile.readline(65537)
                    if not line:
                        raise ConnectionError("client closed mid-body")
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                            pass  # trailers: dropped
                        return
                    left = size
                    while left:
                        data = self.rfile.read(min(left, CHUNK))
                        if not data:
                            raise ConnectionError("client closed mid-body")
                        left -= len(data)
                        yield data
                    self.rfile.readline(3)
                return
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    raise ConnectionError("client closed mid-body")
                left -= len(data)
                yield data

        def reset(self) -> None:
            """Close with SO_LINGER 0: the client sees ECONNRESET, no response."""
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.wfile.close()
                self.connection.close()
            except OSError:
                pass

        def error(self, status: int, reason: str, code: str, message: str) -> None:
            request_id = secrets.token_hex(8).upper()
            data = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message>"
                    "<RequestId>%s</RequestId><HostId>reefguide-lab-faults</HostId></Error>"
                    % (code, message, request_id)).encode()
            if self.command == "HEAD":
                data = b""
            head = ["HTTP/1.1 %d %s" % (status, reason), "Content-Type: application/xml",
                    "Content-Length: %d" % len(data), "x-amz-request-id: %s" % request_id,
                    "Date: %s" % self.date_time_string()]
            if self.close_connection:
                head.append("Connection: close")
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

        def control(self) -> None:
            status = 200
            if self.command == "POST":
                raw = b"".join(self.body())
                try:
                    faults.configure(json.loads(raw or b"{}"))
                except (ValueError, TypeError, re.error) as exc:
                    status = 400
                    doc: dict[str, Any] = {"error": str(exc)}
            if status == 200:
                doc = faults.snapshot()
            data = json.dumps(doc).encode()
            head = ["HTTP/1.1 %d %s" % (status, "OK" if status == 200 else "Bad Request"),
                    "Content-Type: application/json", "Content-Length: %d" % len(data)]
            if self.close_connection:
                head.append("Connection: close")
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)

        # -- forwarding ------------------------------------------------------------
        def connect_upstream(self) -> http.client.HTTPConnection:
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection(upstream_host, upstream_port, timeout=120)
                self.upstream_used = False
            return self.upstream

        def drop_upstream(self) -> None:
            if self.upstream is not None:
                self.upstream.close()
            self.upstream = None

        def forward(self, expect: bool, drop: bool = False) -> None:
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            if not drop:
                faults.count("forwarded")
            try:
                resp = self.send_upstream(expect, chunked)
                if resp is None:  # moto closed the kept-alive connection before the body went
                    resp = self.send_upstream(expect, chunked)
            except UpstreamClosed:
                # moto closed it after the body was read from the client: it cannot be sent again
                faults.count("upstream_errors")
                return self.reset()
            except (OSError, http.client.HTTPException) as exc:
                faults.count("upstream_errors")
                sys.stderr.write("faults: upstream %s %s: %r\n" % (self.command, self.path, exc))
                self.drop_upstream()
                return self.reset()
            if resp is None:
                faults.count("upstream_errors")
                return self.reset()
            if drop:  # applied by moto; the client never hears of it
                resp.read()
                if resp.will_close:
                    self.drop_upstream()
                return self.reset()
            self.relay(resp)

        def send_upstream(self, expect: bool, chunked: bool) -> Optional[http.client.HTTPResponse]:
            """moto's response; None when a kept-alive connection turned out closed
            before anything of the request was consumed (the caller sends again)."""
            has_body = chunked or int(self.headers.get("Content-Length") or 0) > 0
            conn = self.connect_upstream()
            reused = self.upstream_used
            self.upstream_used = True
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        conn.putheader(name, value)
                if chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
            except (BrokenPipeError, ConnectionResetError):
                self.drop_upstream()
                if reused:
                    return None  # nothing read from the client yet: try once on a new connection
                raise
            if expect:
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            for data in self.body():
                conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if chunked:
                conn.send(b"0\r\n\r\n")
            try:
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
                self.drop_upstream()
                if reused and not has_body:
                    return None
                if reused:
                    raise UpstreamClosed(True) from exc
                raise

        def relay(self, resp: http.client.HTTPResponse) -> None:
            head = ["HTTP/1.1 %d %s" % (resp.status, resp.reason)]
            for name, value in resp.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    head.append("%s: %s" % (name, value))
            bodiless = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            until_close = not bodiless and resp.length is None and not resp.chunked
            if resp.chunked and not bodiless:
                head.append("Transfer-Encoding: chunked")
            if until_close:
                self.close_connection = True
            if self.close_connection:
                head.append("Connection: close")
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if not bodiless:
                while True:
                    data = resp.read(CHUNK)
                    if not data:
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if resp.chunked else data)
                if resp.chunked:
                    self.wfile.write(b"0\r\n\r\n")
            else:
                resp.read()
            if resp.will_close:
                self.drop_upstream()

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True, help="moto server's port on 127.0.0.1")
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--kinds", default=",".join(DEFAULT_KINDS))
    ap.add_argument("--stall-seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    faults = Faults(args.rate, [k for k in args.kinds.split(",") if k], args.stall_seconds, args.seed)
    server = Server(("127.0.0.1", args.port), make_handler(faults, "127.0.0.1", args.upstream_port))

    def stop(*_: Any) -> None:
        faults.stop.set()
        faults.released.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write("faults: pid %d on 127.0.0.1:%d -> 127.0.0.1:%d, %s\n"
                     % (os.getpid(), args.port, args.upstream_port, json.dumps(faults.snapshot()["config"])))
    sys.stderr.flush()
    started = time.time()
    server.serve_forever(poll_interval=0.2)
    sys.stderr.write("faults: stopped after %.0f s: %s\n" % (time.time() - started, json.dumps(faults.snapshot())))


if __name__ == "__main__":
    main()
