#!/usr/bin/env python3
"""Write a small ReefGuide-shaped dataset (deterministic bytes) for the demo and the scenarios.

    python lab/sample_data.py DIR [--version N] [--rasters N] [--size-kib N]

Layout as ReefGuideWorker reads it from data/reefguide/: config.toml, criteria
rasters, reef data, plus names that exercise the tool (spaces, quotes, $(...),
non-ASCII). --version changes one raster and config.toml, for update runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os


def block(seed: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(("%s/%d" % (seed, counter)).encode()).digest()
        counter += 1
    return bytes(out[:size])


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def make(root: str, version: int = 1, rasters: int = 4, size_kib: int = 256) -> None:
    write(os.path.join(root, "config.toml"),
          ('[server]\ndata_version = "%d"\n[data]\ncriteria_dir = "criteria"\nreef_data = "reefs/reefs.gpkg"\n'
           % version).encode())
    for i in range(rasters):
        seed = "raster-%d-v%d" % (i, version if i == 0 else 1)
        write(os.path.join(root, "criteria", "Depth_%02d.tif" % i), block(seed, size_kib * 1024))
    write(os.path.join(root, "reefs", "reefs.gpkg"), block("reefs", 64 * 1024))
    write(os.path.join(root, "notes", "read me 'first' $(date) `id`.txt"), b"hands off\n")
    write(os.path.join(root, "notes", "Récifs – données.txt"), b"non-ASCII name\n")
    write(os.path.join(root, "notes", "empty.dat"), b"")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--version", type=int, default=1)
    ap.add_argument("--rasters", type=int, default=4)
    ap.add_argument("--size-kib", type=int, default=256)
    a = ap.parse_args()
    make(a.dir, a.version, a.rasters, a.size_kib)
    print(a.dir)


if __name__ == "__main__":
    main()
