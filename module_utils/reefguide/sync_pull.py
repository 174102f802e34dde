# The pull direction of a Sync: plan against what the destination holds,
# make room (mirror), then download. A pulled file is written to a temporary
# name in its own directory, its SHA-256 checked against the manifest or the
# object's metadata, then renamed into place: readers never see a partial file.

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import time
from typing import Any, Optional

from ansible.module_utils.reefguide.checksums import stat_key
from ansible.module_utils.reefguide.local_tree import scan_dest
from ansible.module_utils.reefguide.manifest import RemoteObject
from ansible.module_utils.reefguide.s3_errors import S3Error, TransientError
from ansible.module_utils.reefguide.sync_common import (
    LocalFileError,
    SyncError,
    is_sha,
    parse_mtime_header,
    thread_buffer,
    tmp_name,
)
from ansible.module_utils.reefguide.sync_plan import plan_pull
from ansible.module_utils.reefguide.transfers import RangedDownload, Runner, discard, pwrite_all, write_all


class PullSync:
    """The pull half of Sync (a mixin: the state it uses is set up by Sync)."""

    def _refuse_kept(self, excluded: list[str]) -> None:
        """A source with files inside a path the pull keeps as it is (a target released on its own)."""
        for keep in self.opts.keep:
            inside = [rel for rel in excluded if rel == keep or rel.startswith(keep.rstrip("/") + "/")]
            if inside:
                raise SyncError(
                    "the source has %r, inside %s, which is released on its own as a separate target and "
                    "which this pull must leave as it is: nothing was changed. Stage that part to its own "
                    "destination, or leave it out of src" % (inside[0], keep))

    def _pull(self) -> None:
        dest, remote = self._scan_both(lambda: scan_dest(self.root, self.excluded))
        self._refuse_kept(remote.excluded)
        seen = {rel for rel, lf in dest.files.items() if rel in remote.files and lf.kind == "file"}
        plan, downloads = plan_pull(
            dest,
            remote,
            self._differ(seen),
            mirror=self.opts.mode == "mirror",
            max_delete=self.opts.max_delete,
            excluded=self.excluded,
            root_exists=os.path.isdir(self.root),
            where=("s3://%s/%s" % (self.opts.bucket, self.prefix), self.root),
            plan=self.plan,
        )
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
        if self.cache and (downloads or plan.delete):
            # written now without the files about to be replaced: a pull killed mid-way must not
            # leave entries behind for names whose inode may be reused (the key has no ctime)
            self.cache.forget([o.rel for o in downloads] + plan.delete)
            self.save_cache()
        self.progress.files_total = len(downloads)
        self.progress.bytes_total = sum(o.size for o in downloads)
        self.progress.set_phase("transferring")
        with Runner(self.opts.concurrency, self.client) as runner:
            for obj in downloads:
                runner.submit(self._download, obj, runner)
            runner.wait()

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

    def open_tmp(self, rel: str) -> tuple[str, str, int]:
        final = self._check_parent(rel)
        tmp = os.path.join(os.path.dirname(final), tmp_name(os.path.basename(final), self.run_id))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o666)
        except OSError as exc:
            raise LocalFileError("cannot write in %s: %s" % (os.path.dirname(final), exc.strerror or exc))
        return final, tmp, fd

    def finish_download(self, obj: RemoteObject, final: str, tmp: str, fd: int, sha: str, mtime_ns: int) -> None:
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
            self.cache.store(obj.rel, stat_key(st), sha, obj.etag, time.time_ns())
        with self.stats_lock:
            self.seen.add(obj.rel)
            self.transferred_files += 1
            self.transferred_bytes += obj.size
        self.progress.file_done()

    def _download(self, obj: RemoteObject, runner: Runner) -> None:
        if runner.failed:
            return
        if obj.size > self.opts.part_size:
            RangedDownload(self, obj).start(runner)
            return
        final, tmp, fd = self.open_tmp(obj.rel)
        try:
            sha, mtime_ns = self.client.retrying(lambda: self._get_into(obj, fd))
            self.finish_download(obj, final, tmp, fd, sha, mtime_ns)
            fd = -1
        finally:
            if fd >= 0:
                discard(fd, tmp)

    def _get_into(self, obj: RemoteObject, fd: int) -> tuple[str, int]:
        """One GET attempt into fd (from offset 0), hashing as it streams."""
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        resp = self.client.send("GetObject", "GET", obj.key, headers={"if-match": '"%s"' % obj.etag}, stream=True)
        expected = obj.sha256 or resp.getheader("x-amz-meta-sha256", "").lower() or None
        mtime_ns = parse_mtime_header(resp.getheader("x-amz-meta-mtime"))
        h = hashlib.sha256()
        got = self.stream_to(resp, fd, None, obj, h)
        if got != obj.size:
            self.progress.add_bytes(-got)  # the retry sends the object again
            raise TransientError("%s: got %d bytes, expected %d" % (self.client.url_for(obj.key), got, obj.size))
        sha = h.hexdigest()
        if expected and is_sha(expected) and sha != expected:
            raise S3Error(
                "ChecksumMismatch",
                "SHA-256 of the downloaded data is %s, expected %s (%s)"
                % (sha, expected, self.client.url_for(obj.key)),
                200,
                "GetObject",
            )
        if expected and not obj.sha256:
            obj.sha256 = expected if is_sha(expected) else None
        return sha, mtime_ns

    def stream_to(self, resp: Any, fd: int, offset: Optional[int], obj: RemoteObject, hasher: Any) -> int:
        """Copies a response body to fd (at offset with pwrite, else at the
        current position); returns the byte count. The progress counts each
        chunk as it lands, and takes back a failed attempt's bytes (a retry
        sends them again)."""
        buf = thread_buffer()
        view = memoryview(buf)
        got = 0
        try:
            while True:
                try:
                    n = resp.readinto(view)
                except (OSError, http.client.HTTPException) as exc:
                    self.client.drop_connection()
                    raise TransientError("GET %s: %s" % (self.client.url_for(obj.key), exc)) from exc
                if not n:
                    break
                chunk = view[:n]
                if hasher is not None:
                    hasher.update(chunk)
                try:
                    if offset is None:
                        write_all(fd, chunk)
                    else:
                        pwrite_all(fd, chunk, offset + got)
                except OSError as exc:
                    raise LocalFileError("cannot write below %s: %s" % (self.root, exc.strerror or exc)) from exc
                got += n
                self.progress.add_bytes(n)
        except BaseException:
            self.progress.add_bytes(-got)
            raise
        finally:
            if not resp.isclosed():
                resp.close()
                self.client.drop_connection()
        return got
