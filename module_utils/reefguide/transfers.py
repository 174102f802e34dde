# The transfer jobs of a sync: the worker pool, a large file's multipart
# upload and its ranged download, and the write helpers they share. Each job
# reports back to its Sync (progress, counters, the checksum cache).

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Optional
from xml.sax.saxutils import escape as xml_escape

from ansible.module_utils.reefguide.checksums import hash_file, stat_key
from ansible.module_utils.reefguide.interrupt import Interrupted, as_interrupted
from ansible.module_utils.reefguide.local_tree import LocalFile
from ansible.module_utils.reefguide.manifest import RemoteObject
from ansible.module_utils.reefguide.s3_client import FileBody, S3Client, checksum_b64, parse_xml
from ansible.module_utils.reefguide.s3_errors import S3Error, TransientError
from ansible.module_utils.reefguide.sync_common import MAX_PARTS, LocalFileError, is_sha, parse_mtime_header

if TYPE_CHECKING:  # the jobs call back into the Sync that runs them
    from ansible.module_utils.reefguide.sync import Sync

# How long an interrupted run waits for its workers: queued tasks return at
# once and cut requests fail at once, so this only bounds a worker stuck on disk.
DRAIN_SECONDS = 5.0


class Runner:
    """A thread pool whose tasks may submit more tasks (the parts of a large
    file); wait() returns when all are done and raises the first failure.
    Every task runs even after a failure: tasks check `failed` and return
    early themselves, so part tasks can still do their bookkeeping (abort
    the upload, remove the temporary).

    Used as a context manager: leaving the block waits for every task; left
    by an interruption, it first cancels: queued tasks return at once, the
    client cuts the requests in flight, and the wait is bounded."""

    def __init__(self, concurrency: int, client: Optional[S3Client] = None):
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3sync")
        self.client = client
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

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Until no task is pending (True), or timeout seconds (False)."""
        with self.cond:
            if not self.cond.wait_for(lambda: not self.pending, timeout):
                return False
        if self.errors and timeout is None:
            raise self.errors[0]
        return True

    def cancel(self, exc: Interrupted) -> bool:
        """Stops the work after an interruption; True once no task runs."""
        with self.cond:
            self.errors.insert(0, exc)
        if self.client is not None:
            self.client.cancel(exc.signame)
        drained = self.wait(DRAIN_SECONDS)
        self.pool.shutdown(wait=False, cancel_futures=True)
        return drained

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            self.cancel(as_interrupted(exc))
        else:
            self.pool.shutdown(wait=True)


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each part: part_size, or more when the file would need more than MAX_PARTS."""
    part = max(part_size, -(-size // MAX_PARTS))
    return [(off, min(part, size - off)) for off in range(0, size, part)]


def write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def discard(fd: int, tmp: str) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.unlink(tmp)
    except OSError:
        pass


class MultipartUpload:
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
        part_digests: Optional[list[bytes]] = None,
    ):
        self.sync, self.lf, self.key, self.upload_id = sync, lf, key, upload_id
        self.ranges, self.st, self.sha, self.hashed_at, self.uploaded = ranges, st, sha, hashed_at, uploaded
        self.part_digests = part_digests
        self.etags: dict[int, str] = {}
        self.checksums: dict[int, str] = {}
        self.outstanding = len(ranges)
        self.failed = False
        self.lock = threading.Lock()

    def part(self, number: int, runner: Runner) -> None:
        ok = False
        try:
            if not self.failed and not runner.failed:
                offset, length = self.ranges[number - 1]
                # S3 checks the part against its SHA-256, signed and so also its checksum (s3_client);
                # a part whose digest the file's read did not give is read here
                digest = (self.part_digests[number - 1] if self.part_digests
                          else hash_file(self.lf.path, offset, length).digest())
                resp = self.sync.client.call(
                    "UploadPart",
                    "PUT",
                    self.key,
                    query={"partNumber": str(number), "uploadId": self.upload_id},
                    body=FileBody(self.lf.path, offset, length, self.sync.progress.add_bytes),
                    payload_hash=digest.hex(),
                )
                with self.lock:
                    self.etags[number] = resp.headers.get("etag", "")
                    self.checksums[number] = checksum_b64(digest)
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
            if stat_key(st) != stat_key(self.st):
                raise LocalFileError("%s changed while it was being uploaded; re-run the sync" % self.lf.path)
            body = (
                "<CompleteMultipartUpload>"
                + "".join(
                    "<Part><ChecksumSHA256>%s</ChecksumSHA256><ETag>%s</ETag><PartNumber>%d</PartNumber></Part>"
                    % (self.checksums[n], xml_escape(self.etags[n]), n)
                    for n in sorted(self.etags)
                )
                + "</CompleteMultipartUpload>"
            ).encode("utf-8")
            def complete_once() -> Any:
                resp = client.send("CompleteMultipartUpload", "POST", self.key, query={"uploadId": self.upload_id},
                                   body=body, payload_hash=hashlib.sha256(body).hexdigest())
                root = parse_xml(resp.data)
                if root.tag == "Error":  # S3 can report a failure in a 200: a 500, retried (as botocore does)
                    raise S3Error(root.findtext("Code") or "InternalError", root.findtext("Message") or "", 500,
                                  "CompleteMultipartUpload")
                return root

            etag = (client.retrying(complete_once).findtext("ETag") or "").strip('"')
        except BaseException:
            self._abort()
            raise
        self.sync.upload_closed(self.upload_id)
        self.sync.record_upload(self.lf, stat_key(self.st), self.sha, etag, self.uploaded, self.hashed_at)

    def _abort(self) -> None:
        self.sync.abort_upload(self.key, self.upload_id)


class RangedDownload:
    """A large object fetched as parallel ranged GETs into one temporary
    file. The SHA-256 is computed in order as the leading ranges complete
    (re-reading them from the page cache), by whichever worker finishes the
    next range, so hashing overlaps the transfer; the one that hashes the
    last range verifies and renames. Memory: one buffer per worker."""

    def __init__(self, sync: Sync, obj: RemoteObject):
        self.sync, self.obj = sync, obj
        self.ranges = part_ranges(obj.size, sync.opts.part_size)
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
        self.final, self.tmp, self.fd = self.sync.open_tmp(self.obj.rel)
        try:
            os.ftruncate(self.fd, self.obj.size)
        except OSError as exc:
            discard(self.fd, self.tmp)
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
                if not self.expected and is_sha(header):
                    self.expected = header
                self.mtime_ns = parse_mtime_header(resp.getheader("x-amz-meta-mtime"))
        got = self.sync.stream_to(resp, self.fd, offset, self.obj, None)
        if got != length:
            self.sync.progress.add_bytes(-got)  # the retry sends the range again
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
                    discard(self.fd, self.tmp)
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
                        discard(self.fd, self.tmp)
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
                        discard(self.fd, self.tmp)
                raise
            with self.lock:
                self.next_hash += 1
        if finished:
            if self.expected and not self.obj.sha256:
                self.obj.sha256 = self.expected
            try:
                self.sync.finish_download(
                    self.obj, self.final, self.tmp, self.fd, self.hasher.hexdigest(), self.mtime_ns
                )
            except BaseException:
                discard(self.fd, self.tmp)
                raise
