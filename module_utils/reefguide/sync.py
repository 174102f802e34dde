# One sync run, local directory (or file) <-> s3://bucket/prefix, both
# directions, incremental by size + SHA-256: set-up (credentials, cache, lock),
# the comparison both directions share, and the result. The direction-specific
# steps are in sync_push.py and sync_pull.py (docs/architecture.md, "S3 engine").
#
# Python 3.9 syntax (Amazon Linux 2023), standard library + botocore only.

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

from ansible.module_utils.reefguide.aws import aws_session, resolve_endpoint
from ansible.module_utils.reefguide.checksums import (
    CacheEntry,
    ChecksumCache,
    default_cache_path,
    file_key,
    local_sha256,
)
from ansible.module_utils.reefguide.credentials import environment_credentials
from ansible.module_utils.reefguide.interrupt import Interrupted, as_interrupted, signals_interrupt
from ansible.module_utils.reefguide.local_tree import LocalFile, Matcher
from ansible.module_utils.reefguide.manifest import RemoteObject, RemoteState, read_remote
from ansible.module_utils.reefguide.paths import human_bytes
from ansible.module_utils.reefguide.progress import Progress
from ansible.module_utils.reefguide.s3_client import S3Client
from ansible.module_utils.reefguide.s3_settings import s3_settings
from ansible.module_utils.reefguide.sync_common import SyncError, is_sha, normalise_prefix, parse_mtime_header
from ansible.module_utils.reefguide.sync_options import SyncOptions, validate_options
from ansible.module_utils.reefguide.sync_plan import Differ, Pair, Plan, known_verdict
from ansible.module_utils.reefguide.sync_pull import PullSync
from ansible.module_utils.reefguide.sync_push import PushSync
from ansible.module_utils.reefguide.transfers import Runner


class Sync(PushSync, PullSync):
    """One sync run. run() returns the result dict or raises SyncError,
    UnsafePathError or an AWS error; after a failure result() still
    describes what had been done."""

    def __init__(self, opts: SyncOptions, credentials: Any = None):
        self.opts = opts
        validate_options(opts)
        self.prefix = normalise_prefix(opts.prefix)
        self.excluded = Matcher(opts.exclude, literal=opts.keep)
        self.run_id = os.urandom(6).hex()
        self.started = time.time()
        self.warnings: list[str] = []
        self.stats_lock = threading.Lock()
        self.transferred_files = self.transferred_bytes = 0
        self.deleted = self.dirs_created = self.dirs_removed = self.temporaries_removed = 0
        self.hashed_files = self.hashed_bytes = 0
        self.multipart_files = 0
        self.open_uploads: dict[str, str] = {}  # upload id -> key, until completed or aborted
        self.creating: set[str] = set()  # keys whose CreateMultipartUpload got no answer yet
        self.uploads_aborted = 0
        self.interrupted: Optional[str] = None  # the signal's name
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

    # -- setup

    def _client(self) -> S3Client:
        o = self.opts
        creds = self.credentials
        region = o.region
        core = None  # a botocore session, when the run needs one for its credentials
        if creds is None:
            creds, region = environment_credentials(o.profile, region)
        if creds is None:
            from botocore.exceptions import NoCredentialsError

            session = aws_session(o.region, o.profile)
            creds, core = session.get_credentials(), session._session
            if creds is None:
                raise NoCredentialsError()
            region = region or session.region_name
        settings = s3_settings(core, o.profile)
        endpoint = resolve_endpoint("s3", o.endpoint_url) or settings.endpoint_url
        return S3Client(o.bucket, creds, region, endpoint, o.max_attempts, settings=settings)

    def _open_cache(self) -> None:
        o = self.opts
        path = o.checksum_cache or default_cache_path(self.root)
        # a pull destination is keyed without ctime: hard links change it (checksums.py)
        self.cache = ChecksumCache(path, self.root, enabled=o.use_checksum_cache and not o.rehash,
                                   with_ctime=o.direction == "push")
        if not o.use_checksum_cache:
            self.cache.path = None

    def save_cache(self) -> None:
        """Writes the cache's entries of the files seen (a failure is a warning: the sync is done)."""
        if not self.cache or self.opts.dry_run:
            return
        try:
            self.cache.save(self.seen)
        except OSError as exc:
            self.warnings.append("could not save the checksum cache %s: %s" % (self.cache.path, exc))

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

    def _count_hashed(self, size: int) -> None:
        with self.stats_lock:
            self.hashed_files += 1
            self.hashed_bytes += size

    def _remote_sha(self, obj: RemoteObject) -> Optional[str]:
        if obj.sha256:
            return obj.sha256
        headers = self.client.head(obj.key)
        if headers.get("etag", "").strip('"') != obj.etag:
            return None  # replaced since the listing: treat as different
        sha = headers.get("x-amz-meta-sha256", "").lower()
        if is_sha(sha):
            obj.sha256 = sha
            obj.source_mtime_ns = parse_mtime_header(headers.get("x-amz-meta-mtime")) or obj.source_mtime_ns
            return sha
        return None

    def _cached(self, lf: LocalFile) -> Optional[CacheEntry]:
        return self.cache.lookup(lf.rel, file_key(lf)) if self.cache else None

    def _differ(self, seen: set[str]) -> Differ:
        """The planners' comparison: from the moment it starts, the cache keeps
        the entries of seen (and only those) when the run ends."""

        def differ(pairs: list[Pair]) -> list[bool]:
            self.seen = seen
            self.progress.set_phase("comparing")
            return self._compare(pairs)

        return differ

    def _compare(self, pairs: list[Pair]) -> list[bool]:
        """For each (local, remote) pair: True when the contents differ.
        Cheap answers first; hashing and HEADs run in the pool."""
        result = [known_verdict(lf, obj, self._cached) for lf, obj in pairs]
        slow = [i for i, verdict in enumerate(result) if verdict is None]
        if slow:
            runner = Runner(self.opts.concurrency, self.client)

            def decide(i: int) -> None:
                if runner.failed:
                    return
                lf, obj = pairs[i]
                sha, _ = local_sha256(lf, self.cache, self._count_hashed)
                remote = self._remote_sha(obj)
                result[i] = remote != sha
                if remote == sha and self.cache:
                    self.cache.store(lf.rel, file_key(lf), sha, obj.etag, time.time_ns())

            with runner:
                for i in slow:
                    runner.submit(decide, i)
                runner.wait()
        return [bool(r) for r in result]

    # -- entry point

    def run(self) -> dict[str, Any]:
        with signals_interrupt():
            return self._run()

    def _run(self) -> dict[str, Any]:
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
        except (Interrupted, KeyboardInterrupt) as exc:
            raise self._interrupted(as_interrupted(exc)) from None
        except BaseException:
            self.progress.close("failed")
            raise
        finally:
            self.save_cache()
            self._release()

    def _interrupted(self, exc: Interrupted) -> Interrupted:
        """What the user reads after a signal; the progress file says it too."""
        self.interrupted = exc.signame
        self.progress.interrupted = exc.signame
        self.progress.close("interrupted")
        what = ["queued transfers cancelled, requests in flight cut"]
        if self.opts.direction == "push":
            what.append("%d multipart uploads aborted" % self.uploads_aborted)
            if self.open_uploads:
                what.append("%d could not be (teardown.yml aborts them)" % len(self.open_uploads))
        else:
            what.append("no partial file under a final name (temporaries removed)")
        return Interrupted(exc.signame, "%s; %d files (%s) had been transferred; run again to resume" % (
            ", ".join(what), self.transferred_files, human_bytes(self.transferred_bytes)))

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

    def _key(self, rel: str) -> str:
        return self.prefix + "/" + rel if self.prefix else rel

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
            "multipart_aborted": self.uploads_aborted,
            "interrupted": self.interrupted,
            "hashed": {"files": self.hashed_files, "bytes": self.hashed_bytes},
            # what the comparison read from the local side (EFS, for a stage's pull)
            "local_read": {"files": self.hashed_files, "hashed_bytes": self.hashed_bytes,
                           "checksum_cache_bytes": self.cache.bytes_read if self.cache else 0,
                           "bytes": self.hashed_bytes + (self.cache.bytes_read if self.cache else 0)},
            "manifest_written": self.manifest_written,
            "requests": requests,
            "retries": self.client.retries if self.client else 0,
            "seconds": round(seconds, 3),
            "throughput_bytes_per_second": round(self.transferred_bytes / seconds),
            "throughput": "%s/s" % human_bytes(self.transferred_bytes / seconds),
            "checksum_cache": self.cache.path if self.cache else None,
            "warnings": self.warnings,
        }


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
