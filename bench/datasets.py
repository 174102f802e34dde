"""The benchmark's data sets: generated, deterministic (seeded), cached.

Each set is a list of (relative path, size) with content drawn from a
random.Random seeded by the set's name and the file's path, so the same
set is byte for byte the same on every machine and in every run. A set is
generated once into .bench/data/<scale>-<name>/ and reused while its stamp
(the spec it was made from) and a stat walk (file count and bytes) agree.

Everything is written in 1 MiB pieces: the harness's own peak RSS is
inherited by every process it starts (Linux copies the parent's high-water
mark into a child's ru_maxrss at fork/exec), so the harness must stay small.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

KiB = 1024
MiB = 1024 * KiB
CHUNK = MiB
SPEC_VERSION = 1
MANIFEST_NAME = ".reefguide-manifest.json"  # the engine's manifest object: not data


@dataclass(frozen=True)
class DataSet:
    name: str  # small | large | mixed
    scale: str  # full | quick
    files: tuple[tuple[str, int], ...]  # (relative path, size), sorted
    change_target: Optional[str] = None  # the file the one-file-change legs modify

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        return "%d files, %s" % (self.count, human(self.total_bytes))


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024
    return "%d B" % n  # pragma: no cover


# -- shapes (docs/architecture.md, "S3 engine" / issue 5): full sizes, and --quick ones for smoke runs

def small_set(scale: str) -> DataSet:
    """5,000 x 8 KiB in nested folders (10 x 10 folders of 50 files)."""
    outer, inner, per_dir = (10, 10, 50) if scale == "full" else (4, 5, 10)
    files = [
        ("d%02d/e%02d/f%04d.dat" % (a, b, c), 8 * KiB)
        for a in range(outer)
        for b in range(inner)
        for c in range(per_dir)
    ]
    return DataSet("small", scale, tuple(sorted(files)))


def large_set(scale: str) -> DataSet:
    """4 x 256 MiB."""
    count, size = (4, 256 * MiB) if scale == "full" else (2, 24 * MiB)
    return DataSet("large", scale, tuple(("large_%d.bin" % i, size) for i in range(count)))


def mixed_set(scale: str) -> DataSet:
    """Shaped like ReefGuide data: 20 rasters x 40 MiB, 2,000 small tables
    (1-32 KiB, in 10 region folders), one config.toml."""
    rasters, raster_size, tables = (20, 40 * MiB, 2000) if scale == "full" else (3, 6 * MiB, 40)
    sizes = random.Random("mixed-table-sizes").choices(range(1 * KiB, 32 * KiB + 1), k=tables)
    files = [("rasters/criteria_%02d.tif" % i, raster_size) for i in range(rasters)]
    files += [("tables/region_%d/reef_%04d.csv" % (i % 10, i), sizes[i]) for i in range(tables)]
    files.append(("config.toml", len(config_toml())))
    change = "rasters/criteria_%02d.tif" % (rasters // 2)
    return DataSet("mixed", scale, tuple(sorted(files)), change_target=change)


SHAPES = {"small": small_set, "large": large_set, "mixed": mixed_set}


def data_set(name: str, scale: str) -> DataSet:
    if name not in SHAPES:
        raise ValueError("unknown data set %r (choose from %s)" % (name, ", ".join(SHAPES)))
    return SHAPES[name](scale)


def config_toml() -> bytes:
    return (
        b"# ReefGuide worker configuration (benchmark stand-in)\n"
        b"[preprocessing]\nrasters = \"rasters\"\ntables = \"tables\"\n"
        b"[server]\ncache = \"cache\"\nreef_threshold = 0.7\n"
    )


# -- content

def write_file(path: Path, seed: str, size: int) -> None:
    """size bytes drawn from random.Random(seed), written 1 MiB at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(CHUNK, left)
            fh.write(rng.randbytes(n))
            left -= n


def file_seed(ds: DataSet, rel: str) -> str:
    return "reefguide-bench:%s:%s" % (ds.name, rel)


def write_member(root: Path, ds: DataSet, rel: str, size: int) -> None:
    if rel == "config.toml":
        root.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(config_toml())
    else:
        write_file(root / rel, file_seed(ds, rel), size)


def spec_of(ds: DataSet) -> dict:
    digest = hashlib.sha256(json.dumps(ds.files).encode()).hexdigest()
    return {"version": SPEC_VERSION, "name": ds.name, "scale": ds.scale, "count": ds.count,
            "bytes": ds.total_bytes, "files_sha256": digest}


def tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, bytes) below root; the engine's manifest and rclone's
    hidden temporaries are not data and are not counted."""
    count = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name == MANIFEST_NAME or name.startswith(".rclone_temp"):
                continue
            st = os.lstat(os.path.join(dirpath, name))
            count += 1
            total += st.st_size
    return count, total


def ensure(ds: DataSet, data_dir: Path, log=print) -> Path:
    """The set's directory, generated unless a complete copy is cached.
    The change target is rewritten to its original content every time (the
    change legs modify it in place)."""
    root = data_dir / ("%s-%s" % (ds.scale, ds.name))
    stamp = data_dir / ("%s-%s.json" % (ds.scale, ds.name))
    want = spec_of(ds)
    cached = False
    if stamp.is_file() and root.is_dir():
        try:
            cached = json.loads(stamp.read_text()) == want and tree_stats(root) == (ds.count, ds.total_bytes)
        except (OSError, ValueError):
            cached = False
    if not cached:
        started = time.monotonic()
        log("generating data set %s (%s) in %s" % (ds.name, ds.describe(), root))
        if stamp.exists():
            stamp.unlink()
        if root.exists():
            shutil.rmtree(root)
        for rel, size in ds.files:
            write_member(root, ds, rel, size)
        stamp.write_text(json.dumps(want, indent=1) + "\n")
        log("  done in %.1f s" % (time.monotonic() - started))
    elif ds.change_target:
        restore(ds, root)
    return root


def size_of(ds: DataSet, rel: str) -> int:
    return dict(ds.files)[rel]


def restore(ds: DataSet, root: Path) -> None:
    """Put the change target back to its generated content."""
    rel = ds.change_target
    if rel:
        write_member(root, ds, rel, size_of(ds, rel))


def modify(ds: DataSet, root: Path, generation: int) -> str:
    """Overwrite the first MiB of the change target with new content (size
    kept, as when a raster is re-exported) and date it a second ahead, so
    tools that compare modification times with the destination's (aws, s5cmd)
    see it as newer even on second-granular listings. Returns its path."""
    rel = ds.change_target
    if not rel:
        raise ValueError("data set %s has no change target" % ds.name)
    path = root / rel
    n = min(CHUNK, size_of(ds, rel))
    data = random.Random("%s:change:%d" % (file_seed(ds, rel), generation)).randbytes(n)
    with open(path, "r+b") as fh:
        fh.write(data)
    later = time.time_ns() + 1_000_000_000
    os.utime(path, ns=(later, later))
    return rel


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
