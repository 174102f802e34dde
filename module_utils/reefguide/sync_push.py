# The push direction of a Sync: compare, upload (whole or in parts), delete
# in mirror mode, then write the manifest so the next run (or the pull on the
# other side) needs no HEAD and no re-read.

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Optional

from ansible.module_utils.reefguide.checksums import Both, hash_file, stat_key
from ansible.module_utils.reefguide.local_tree import LocalFile, scan_source
from ansible.module_utils.reefguide.manifest import RemoteState, manifest_body, manifest_doc
from ansible.module_utils.reefguide.s3_client import FileBody, parse_xml
from ansible.module_utils.reefguide.s3_errors import S3Error, TransientError
from ansible.module_utils.reefguide.sync_common import (
    IN_MEMORY_MAX,
    MANIFEST_NAME,
    LocalFileError,
    SyncError,
    mtime_header,
)
from ansible.module_utils.reefguide.sync_plan import plan_push
from ansible.module_utils.reefguide.transfers import MultipartUpload, Runner, part_ranges

# S3's clock against ours, when telling the uploads this run started from older ones.
UPLOAD_CLOCK_SKEW = 300


class PushSync:
    """The push half of Sync (a mixin: the state it uses is set up by Sync)."""

    def _push(self) -> None:
        src, remote = self._scan_both(lambda: scan_source(self.root, self.excluded))
        self.warnings.extend(src.warnings)
        files, empty_dirs = src.files, src.empty
        plan, uploads = plan_push(
            src, remote, self._differ(set(files)), self.opts.mode == "mirror", self.opts.max_delete, self.plan
        )
        if self.opts.dry_run:
            return
        self.progress.files_total = len(uploads)
        self.progress.bytes_total = sum(lf.size for lf in uploads)
        self.progress.set_phase("transferring")
        uploaded: dict[str, tuple[str, str, int, int]] = {}  # rel -> sha, etag, size, mtime_ns
        try:
            with Runner(self.opts.concurrency, self.client) as runner:
                for lf in uploads:
                    runner.submit(self._upload, lf, runner, uploaded)
                runner.wait()
        except BaseException:
            # the workers have stopped: nothing below races them
            self._abort_open_uploads()
            self._partial_manifest(remote, uploaded, empty_dirs)
            raise
        if plan.delete:
            self.progress.set_phase("deleting")
            self.client.delete_objects([self._key(rel) for rel in plan.delete])
            self.deleted = len(plan.delete)
        self._write_manifest(remote, uploaded, empty_dirs, final=True)

    def _partial_manifest(self, remote: RemoteState, uploaded: dict, empty_dirs: list[str]) -> None:
        """After a failed (or interrupted) push, record what did get uploaded
        so the re-run does not need a HEAD for it. Best effort: the failure is
        what counts."""
        if not uploaded:
            return
        try:
            with self.client.cleanup():
                self._write_manifest(remote, uploaded, empty_dirs, final=False)
        except (S3Error, TransientError, SyncError) as exc:
            self.warnings.append("could not update the manifest after the failure: %s" % exc)

    # -- multipart uploads this run started: none is left behind, billed and invisible

    def abort_upload(self, key: str, upload_id: str) -> bool:
        """Best effort (the failure that led here is what gets reported); the
        upload stays on the books when it could not be aborted."""
        try:
            with self.client.cleanup():
                self.client.call("AbortMultipartUpload", "DELETE", key, query={"uploadId": upload_id})
        except (S3Error, TransientError, SyncError):
            return False
        self.upload_closed(upload_id)
        with self.stats_lock:
            self.uploads_aborted += 1
        return True

    def upload_closed(self, upload_id: str) -> None:
        with self.stats_lock:
            self.open_uploads.pop(upload_id, None)

    def _abort_open_uploads(self) -> None:
        """After the workers stopped: aborts every upload still open, and those
        of a CreateMultipartUpload cut before its answer (found by listing
        that key's uploads started since this run began)."""
        for upload_id, key in list(self.open_uploads.items()):
            self.abort_upload(key, upload_id)
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started - UPLOAD_CLOCK_SKEW))
        for key in sorted(self.creating):
            try:
                with self.client.cleanup():
                    found = self.client.uploads_of(key)
            except (S3Error, TransientError, SyncError) as exc:
                self.warnings.append("could not look for an unfinished upload of %s: %s" % (key, exc))
                continue
            for upload_id, initiated in found:
                if initiated[:19] >= since:
                    self.abort_upload(key, upload_id)
        if self.open_uploads:
            self.warnings.append(
                "%d multipart uploads could not be aborted: teardown.yml aborts them" % len(self.open_uploads)
            )

    def _put_headers(self, sha: str, mtime_ns: int) -> dict[str, str]:
        headers = {"x-amz-meta-sha256": sha, "x-amz-meta-mtime": mtime_header(mtime_ns)}
        if self.opts.sse:
            headers["x-amz-server-side-encryption"] = self.opts.sse
            if self.opts.sse == "aws:kms" and self.opts.sse_kms_key_id:
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.opts.sse_kms_key_id
        return headers

    def record_upload(self, lf: LocalFile, key: list[int], sha: str, etag: str, uploaded: dict, hashed_at: int) -> None:
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
                body = FileBody(lf.path, 0, st.st_size, self.progress.add_bytes)
                size = 0  # counted as it is sent
        # The payload hash is the file's SHA-256 (and so its checksum): S3 rejects a body that
        # does not match it, so a file changing under us cannot be stored silently.
        resp = self.client.call(
            "PutObject", "PUT", key, headers=self._put_headers(sha, st.st_mtime_ns), body=body, payload_hash=sha
        )
        self.progress.add_bytes(size)
        self.record_upload(lf, stat_key(st), sha, resp.headers.get("etag", "").strip('"'), uploaded, hashed_at)

    def _sha_for_upload(self, lf: LocalFile, st: os.stat_result) -> str:
        entry = self.cache.lookup(lf.rel, stat_key(st)) if self.cache else None
        if entry:
            return entry.sha256
        sha = hash_file(lf.path).hexdigest()
        self._count_hashed(st.st_size)
        return sha

    def _shas_for_multipart(self, lf: LocalFile, st: os.stat_result,
                            ranges: list[tuple[int, int]]) -> tuple[str, Optional[list[bytes]]]:
        """The file's SHA-256 and, from the same read, each part's (S3 checks a part against it);
        with the file's SHA-256 in the cache, no read here and each part is hashed as it goes."""
        entry = self.cache.lookup(lf.rel, stat_key(st)) if self.cache else None
        if entry:
            return entry.sha256, None
        whole, parts = hashlib.sha256(), []
        for offset, length in ranges:
            part = hashlib.sha256()
            hash_file(lf.path, offset, length, Both(whole, part))
            parts.append(part.digest())
        self._count_hashed(st.st_size)
        return whole.hexdigest(), parts

    def _upload_multipart(self, lf: LocalFile, runner: Runner, uploaded: dict) -> None:
        key = self._key(lf.rel)
        fh, st = self._open_stat(lf)
        fh.close()
        hashed_at = time.time_ns()
        ranges = part_ranges(st.st_size, self.opts.part_size)
        sha, part_digests = self._shas_for_multipart(lf, st, ranges)
        with self.stats_lock:
            self.creating.add(key)
        headers = dict(self._put_headers(sha, st.st_mtime_ns), **{"x-amz-checksum-algorithm": "SHA256"})
        resp = self.client.call("CreateMultipartUpload", "POST", key, query={"uploads": ""}, headers=headers)
        upload_id = parse_xml(resp.data).findtext("UploadId")
        if not upload_id:
            raise SyncError("CreateMultipartUpload for %s returned no UploadId" % self.client.url_for(key))
        with self.stats_lock:
            self.open_uploads[upload_id] = key
            self.creating.discard(key)
        job = MultipartUpload(self, lf, key, upload_id, ranges, st, sha, hashed_at, uploaded, part_digests)
        with self.stats_lock:
            self.multipart_files += 1
        for number in range(1, len(ranges) + 1):
            runner.submit(job.part, number, runner)

    # -- manifest

    def _write_manifest(
        self,
        remote: RemoteState,
        uploaded: dict[str, tuple[str, str, int, int]],
        empty_dirs: list[str],
        final: bool,
    ) -> None:
        """Writes the manifest (manifest.manifest_doc) when its content changes."""
        deleted = set(self.plan.delete) if final else set()
        doc = manifest_doc(remote, uploaded, empty_dirs, deleted, keep_dirs=self.opts.mode == "merge")
        if doc is None:
            return
        body = manifest_body(doc)
        sha = hashlib.sha256(body).hexdigest()
        headers = {"content-type": "application/json"}
        if self.opts.sse:
            headers.update({k: v for k, v in self._put_headers(sha, 0).items() if "encryption" in k})
        self.client.call("PutObject", "PUT", self._key(MANIFEST_NAME), headers=headers, body=body, payload_hash=sha)
        remote.manifest = doc
        self.manifest_written = True

    # -- pull
