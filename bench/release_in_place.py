"""Time efs_release of data/reefguide in place against the whole-directory swap (two renames),
in-process on the local disk: .venv/bin/python bench/release_in_place.py (docs/architecture.md 7)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ansible.module_utils

ansible.module_utils.__path__.append(str(Path(__file__).resolve().parents[1] / "module_utils"))
from ansible.module_utils.reefguide.fs import clone  # noqa: E402
from ansible.module_utils.reefguide.params import with_defaults  # noqa: E402
from ansible.module_utils.reefguide.release import EFS_RELEASE_ARGS, run_efs_release  # noqa: E402


class Host:
    def warn(self, msg: str) -> None:
        pass


def one(swap: str, files: int, changed: int) -> float:
    """Seconds for one release of a root of files 1 KiB files, changed of them changed in staging."""
    top = tempfile.mkdtemp()
    live = os.path.join(top, "data/reefguide")
    for i in range(files):
        p = os.path.join(live, "layers/d%02d/f%05d.tif" % (i % 50, i))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as fh:
            fh.write(b"x" * 1024)
    os.makedirs(os.path.join(live, "cache"))
    staging = os.path.join(top, ".reefguide-staging/k/data/reefguide")
    os.makedirs(os.path.dirname(staging))
    clone(live, staging, {"cache"})
    for i in range(changed):
        p = os.path.join(staging, "layers/d%02d/f%05d.tif" % (i % 50, i))
        with open(p + ".t", "wb") as fh:
            fh.write(b"y" * 1024)
        os.rename(p + ".t", p)
    params = with_defaults(EFS_RELEASE_ARGS, {"root": top, "target": "data/reefguide", "swap": swap, "release_id": "r1",
                                              "staging": ".reefguide-staging/k/data/reefguide"})
    started = time.perf_counter()
    res = run_efs_release(Host(), params)
    seconds = time.perf_counter() - started
    assert res["swap_method"] == swap.replace("rename", "two_renames"), res["swap_method"]
    shutil.rmtree(top)
    return seconds


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [5000, 50000]
    for files in sizes:
        for swap in ("in_place", "rename"):
            ts = sorted(one(swap, files, 100) for _ in range(3))
            print("%6d files, 100 changed, swap=%-8s median %.3f s (min %.3f, max %.3f)"
                  % (files, swap, ts[1], ts[0], ts[2]))


if __name__ == "__main__":
    main()
