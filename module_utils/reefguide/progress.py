# Progress of a running sync, written as a small JSON file that an async play
# (or `watch cat`) can poll: counters shared by the workers, a writer thread.

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Optional


class Progress:
    """Counters shared by the workers; written as JSON to progress_file every
    interval seconds (atomically) so an async play can poll it."""

    def __init__(self, path: Optional[str], interval: float, direction: str):
        self.path = path
        self.interval = max(0.2, interval)
        self.direction = direction
        self.lock = threading.Lock()
        self.phase = "scanning"
        self.interrupted: Optional[str] = None  # the signal that stopped the run
        self.files_total = self.bytes_total = 0
        self.files_done = self.bytes_done = 0
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if path:
            self.write()
            self._thread = threading.Thread(target=self._run, name="s3sync-progress", daemon=True)
            self._thread.start()

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes_done += n

    def file_done(self) -> None:
        with self.lock:
            self.files_done += 1

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.write()

    def snapshot(self) -> dict[str, Any]:
        elapsed = time.time() - self.started
        with self.lock:
            done, total = self.bytes_done, self.bytes_total
            doc = dict(
                direction=self.direction,
                phase=self.phase,
                files_total=self.files_total,
                files_done=self.files_done,
                bytes_total=total,
                bytes_done=done,
            )
            if self.interrupted:
                doc["interrupted"] = self.interrupted
        rate = done / elapsed if elapsed > 0 else 0.0
        doc.update(
            elapsed_seconds=round(elapsed, 3),
            throughput_bytes_per_second=round(rate),
            percent=round(100.0 * done / total, 1) if total else (100.0 if self.phase == "done" else 0.0),
            eta_seconds=round((total - done) / rate, 1) if rate > 0 and total > done else None,
            pid=os.getpid(),
            updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        return doc

    def write(self) -> None:
        if not self.path:
            return
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.snapshot(), fh)
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is best effort; the sync itself must not fail on it

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def close(self, phase: str) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.phase = phase
        self.write()
