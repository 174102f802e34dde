"""The sync engine interrupted: SIGINT (Ctrl-C, which ansible-playbook's
worker forwards to the module's process group) or SIGTERM (a killed task)
in the middle of a push or pull of many parts. The engine must stop sending
(asserted on the requests the server sees after the signal, not on time),
abort the multipart uploads it started, leave nothing partial under a final
name, and say it was interrupted, in its exit and its progress file.

The S3 endpoint is the moto server of test_s3_sync.py behind a small proxy
here that counts requests in arrival order and holds each data request a
little, so that a run lasts long enough to be interrupted."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from ansible.module_utils.reefguide.sync_common import TMP_RE
from test_s3_sync import (  # noqa: F401 - fixtures
    ENGINE,
    MiB,
    Server,
    age,
    answer_head,
    aws_env,
    engine,
    fetch,
    moto,
    relay,
    snapshot,
    write,
)

from helpers import ROOT, VENV_BIN

CONCURRENCY = 4
PART = 5 * MiB
BIG_FILES, BIG_SIZE = 3, 30 * MiB  # 18 parts
SMALL_FILES = 200
HOLD = 0.1  # seconds each data request is held by the proxy


class Counting(http.server.BaseHTTPRequestHandler):
    """Forwards to moto; notes every request (method, path, whether its body
    arrived whole) in arrival order; holds data requests HOLD seconds, and
    while `gate` is closed, until it opens (a test that must not race the
    transfer's end closes it)."""

    target = ""
    log: list[tuple[str, str, bool]] = []
    lock = threading.Lock()
    gate = threading.Event()

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        whole = len(body) == length
        with self.lock:
            self.log.append((self.command, self.path, whole))
        if not whole:
            return  # cut by the client: never reaches S3
        if is_data(self.command, self.path):
            time.sleep(HOLD)
            self.gate.wait(120)
        try:
            relay(self, self.target, body or None)
        except OSError:
            pass  # the client cut the request: its answer has nowhere to go

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


def is_data(method: str, path: str) -> bool:
    """A request that moves file bytes: PutObject, UploadPart, GetObject (not the manifest)."""
    target, _, query = path.partition("?")
    if "reefguide-manifest" in target:
        return False
    if method == "PUT":
        return not query or "partNumber=" in query
    return method == "GET" and not query


class Proxy:
    def __init__(self, target: str, log: list[tuple[str, str, bool]], gate: threading.Event):
        self.log, self.gate = log, gate
        self.endpoint = target

    def mark(self) -> int:
        with Counting.lock:
            return len(self.log)

    def seen(self, pred: Callable[[str, str], bool], since: int = 0) -> int:
        with Counting.lock:
            return sum(1 for method, path, _ in self.log[since:] if pred(method, path))


@pytest.fixture
def proxy(moto: Server) -> Iterator[Proxy]:  # noqa: F811 - the fixture imported above
    log: list[tuple[str, str, bool]] = []
    gate = threading.Event()
    gate.set()  # open: data moves after HOLD
    handler = type("Proxy", (Counting,), {"target": moto.endpoint[len("http://"):], "log": log, "gate": gate})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # cut connections
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Proxy("http://127.0.0.1:%d" % server.server_address[1], log, gate)
    finally:
        gate.set()
        server.shutdown()
        server.server_close()


def make_src(root: Path) -> Path:
    for i in range(BIG_FILES):
        write(root / ("big%d.bin" % i), os.urandom(BIG_SIZE))
    for i in range(SMALL_FILES):
        write(root / "tables" / ("t%03d.csv" % i), b"%d," % i * 300)
    return age(root)


def progress(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def start_engine(direction: str, path: Path, bucket: str, endpoint: str, prog: Path, env: dict) -> subprocess.Popen:
    argv = [sys.executable, str(ENGINE), direction, str(path), "s3://%s/data" % bucket, "--endpoint-url", endpoint,
            "--part-size", "5MiB", "--concurrency", str(CONCURRENCY), "--progress-file", str(prog),
            "--progress-interval", "0.2", "--summary"]  # fmt: skip
    # as a job in a terminal's foreground: a suite started in the background (bash without job
    # control) hands its children SIGINT ignored, and the engine keeps an ignored signal ignored
    return subprocess.Popen(argv, env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt_when(proc: subprocess.Popen, ready: Callable[[], bool], proxy: Proxy, signum: int) -> tuple[int, str]:
    """Sends signum once ready(); returns (requests seen before it, stderr)."""
    deadline = time.time() + 120  # a safety net for a hung run, not an assertion on speed
    while not ready():
        assert proc.poll() is None, "the run ended before it could be interrupted: %s" % proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.02)
    mark = proxy.mark()
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return mark, err


def is_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_interrupted_push_stops_sending_and_leaves_no_multipart_upload(
    moto: Server, proxy: Proxy, tmp_path: Path, aws_env: dict[str, str], signame: str  # noqa: F811
) -> None:
    src = make_src(tmp_path / "src")
    bucket = moto.new_bucket()
    prog = tmp_path / "progress.json"
    proc = start_engine("push", src, bucket, proxy.endpoint, prog, aws_env)
    signum = getattr(signal, signame)
    mark, err = interrupt_when(proc, lambda: proxy.seen(is_part) >= 2, proxy, signum)

    assert proc.returncode == 128 + signum, err
    assert "interrupted by %s" % signame in err and "multipart uploads aborted" in err, err
    assert "Traceback" not in err, err
    # Only what was already on its way arrives after the signal: before the fix every queued
    # part and file was still sent (about 200 requests here).
    assert proxy.seen(is_data, since=mark) <= 2 * CONCURRENCY
    assert proxy.seen(is_part) < BIG_FILES * BIG_SIZE // PART
    assert moto.s3().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # none left, billed
    assert proxy.seen(lambda m, p: m == "DELETE" and "uploadId=" in p, since=mark) >= 1  # it aborted its own
    state = progress(prog)
    assert state["phase"] == "interrupted" and state["interrupted"] == signame
    # What did arrive is whole: every object under data/ holds its file's bytes.
    for obj in moto.s3().list_objects_v2(Bucket=bucket, Prefix="data/").get("Contents", []):
        rel = obj["Key"][len("data/"):]
        if not rel.startswith(".reefguide"):
            body = moto.s3().get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            assert body == (src / rel).read_bytes()


def test_an_interrupted_pull_stops_and_leaves_nothing_partial(
    moto: Server, proxy: Proxy, tmp_path: Path, aws_env: dict[str, str]  # noqa: F811
) -> None:
    src = make_src(tmp_path / "src")
    bucket = moto.new_bucket()
    engine(moto, "push", src, bucket, part_size=PART)
    dest = tmp_path / "dest"
    prog = tmp_path / "progress.json"
    proc = start_engine("pull", dest, bucket, proxy.endpoint, prog, aws_env)

    def ranged_and_small() -> bool:
        return progress(prog).get("files_done", 0) >= 5 and proxy.seen(is_data) >= 12

    mark, err = interrupt_when(proc, ranged_and_small, proxy, signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT" in err and "no partial file under a final name" in err, err
    assert "Traceback" not in err, err
    assert proxy.seen(is_data, since=mark) <= 2 * CONCURRENCY
    got = snapshot(dest)
    assert not [name for name in got if TMP_RE.match(os.path.basename(name).decode())]  # temporaries removed
    whole = snapshot(src)
    files = {name: data for name, data in got.items() if data is not None}
    assert files and all(whole[name] == data for name, data in files.items())  # nothing partial
    assert len(files) < BIG_FILES + SMALL_FILES  # it did stop
    assert progress(prog)["phase"] == "interrupted"
    engine(moto, "pull", dest, bucket)  # the re-run completes
    assert snapshot(dest) == whole


def test_ctrl_c_of_ansible_reaches_the_module_which_aborts_its_uploads(
    moto: Server, proxy: Proxy, tmp_path: Path, aws_env: dict[str, str]  # noqa: F811
) -> None:
    """Ctrl-C in a terminal signals ansible's process group; its worker (a
    session of its own) passes SIGINT on to the module's process group. The
    module's python gets it, and cleans up even though ansible has exited."""
    src = make_src(tmp_path / "src")
    bucket = moto.new_bucket()
    prog = tmp_path / "progress.json"
    args = ("direction=push path=%s bucket=%s prefix=data part_size=5MiB concurrency=%d progress_file=%s "
            "progress_interval=0.2" % (src, bucket, CONCURRENCY, prog))
    env = dict(os.environ, **aws_env, AWS_ENDPOINT_URL=proxy.endpoint, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    proc = subprocess.Popen([str(VENV_BIN / "ansible"), "localhost", "-m", "s3_sync", "-a", args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 120  # safety net only
    while proxy.seen(is_part) < 2:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline
        time.sleep(0.02)
    mark = proxy.mark()
    # no data moves from now on: the upload cannot end before the signal reaches the module, however
    # slowly a loaded machine passes it on (s12a: it ended first, and the test saw 'done')
    proxy.gate.clear()
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted" in out.lower(), out
    while progress(prog).get("phase") != "interrupted":  # the module finishes after ansible has gone
        assert time.time() < deadline, progress(prog)
        time.sleep(0.05)
    # SIGINT passed on by ansible's worker, or SIGTERM when ansible ends its workers first: which
    # arrives first depends on the machine's load (s9g saw SIGTERM); either way the module cleans up
    assert progress(prog)["interrupted"] in ("SIGINT", "SIGTERM")
    assert proxy.seen(is_data, since=mark) <= 2 * CONCURRENCY
    assert moto.s3().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


class HalfWay(http.server.BaseHTTPRequestHandler):
    """Forwards to moto, except that every data request of the big file moves half its bytes (a
    part's body half read, or a range's answer half sent) and then waits for `gate`; the first of
    them is then cut, as a dropped connection would, and the client has to send it again."""

    target = ""
    gate = threading.Event()
    lock = threading.Lock()
    halted: list[str] = []

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        target = self.path.partition("?")[0]
        big = is_data(self.command, self.path) and target.endswith("/big.bin")
        if not big:
            body = self.rfile.read(length) if length else b""
            relay(self, self.target, body or None)
            return
        with self.lock:
            first = not self.halted
            self.halted.append(self.command)
        body = b""
        if self.command == "PUT":
            body = self.rfile.read(length // 2)
            self.gate.wait(120)
            if first:
                self.close_connection = True
                return
            body += self.rfile.read(length - len(body))
            relay(self, self.target, body)
            return
        status, headers, data = fetch(self, self.target, None)
        answer_head(self, status, headers, len(data))
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.gate.wait(120)
        if first:
            self.close_connection = True
            return
        self.wfile.write(data[len(data) // 2:])

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def halfway(moto: Server) -> Iterator[type[HalfWay]]:  # noqa: F811 - the fixture imported above
    handler = type("Halting", (HalfWay,), {"target": moto.endpoint[len("http://"):], "gate": threading.Event(),
                                           "halted": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # cut connections
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler.endpoint = "http://127.0.0.1:%d" % server.server_address[1]  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        handler.gate.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_progress_moves_within_a_part_and_counts_a_resent_part_once(
    moto: Server, halfway: type[HalfWay], tmp_path: Path, aws_env: dict[str, str], direction: str  # noqa: F811
) -> None:
    """On a slow link a 16 MiB part takes minutes: the progress file (what `watch cat` and the
    pull's lines in the playbook output show) must move while parts are on their way, not only
    when one has arrived, and a part sent again after a cut must not count twice."""
    src = tmp_path / "src"
    big = write(src / "big.bin", os.urandom(2 * CONCURRENCY * PART))  # twice the parts in flight
    write(src / "small.csv", b"1,2,3\n")
    age(src)
    bucket = moto.new_bucket()
    path = src
    if direction == "pull":
        engine(moto, "push", src, bucket, part_size=PART)
        path = tmp_path / "dest"
    prog = tmp_path / "progress.json"
    proc = start_engine(direction, path, bucket, halfway.endpoint, prog, aws_env)  # type: ignore[attr-defined]
    deadline = time.time() + 120  # a safety net for a hung run, not an assertion on speed
    try:
        # every part of the big file is half way, none answered: the progress says so
        while len(halfway.halted) < CONCURRENCY or progress(prog).get("bytes_done", 0) < PART:
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, (halfway.halted, progress(prog))
            time.sleep(0.05)
        held = progress(prog)
        assert held["phase"] == "transferring" and held["files_done"] <= 1, held  # small.csv at most
        assert 0 < held["percent"] < 100, held  # half the parts are not yet started
    finally:
        halfway.gate.set()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(halfway.halted) == 2 * CONCURRENCY + 1  # the cut part was sent again
    done = progress(prog)
    assert done["phase"] == "done" and done["bytes_done"] == done["bytes_total"] == big.stat().st_size + 6, done
    if direction == "pull":
        assert snapshot(path) == snapshot(src)
