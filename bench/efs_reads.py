"""What a stage reads from EFS (issue 9), in a lab of its own: a fresh one-file stage, then a
2,000-file tree staged fresh and again after one file changed (same size, so only a SHA-256 tells
it apart). For each: bytes and files read from EFS (the lab's count, lab/reefguide_lab/efs_reads.py),
SSM sessions and module transfers (labd) and wall time.

    .venv/bin/python bench/efs_reads.py [--work DIR] [--files 2000] [--size 65536]

Prints a table and writes DIR/efs-reads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage import StageLab, stage_once, verify  # noqa: E402


def make_tree(root: Path, files: int, size: int) -> list[Path]:
    """files random files of one size in 20 directories (seeded: the same tree every run)."""
    rng = random.Random(9)
    paths = [root / ("d%02d" % (i % 20)) / ("layer-%04d.bin" % i) for i in range(files)]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return paths


def change_one(path: Path) -> None:
    """New content of the same size."""
    path.write_bytes(os.urandom(path.stat().st_size))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64 * 1024)
    args = ap.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="reefguide-efs-reads-"))).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    one = work / "one-file"
    make_tree(one, 1, args.size)
    big = work / "tree"
    paths = make_tree(big, args.files, args.size)
    legs = [("one-file", "fresh", one, None), ("tree", "fresh", big, None),
            ("tree", "1 file changed", big, paths[len(paths) // 2])]
    results = {}
    with StageLab(work / "lab", work / "logs" / "lab.log") as lab:
        for name, leg, src, change in legs:
            if change is not None:
                change_one(change)
            dest = "data/reefguide/bench/%s" % name
            r = stage_once(lab, src, dest, work / "logs" / ("%s-%s.log" % (name, leg.replace(" ", "-"))))
            r["error"] = verify(lab, src, dest) if r["ok"] else "exit %d" % r["rc"]
            results["%s/%s" % (name, leg)] = {k: r[k] for k in ("seconds", "ssm_sessions", "module_transfers",
                                                                 "efs_read", "error")}
            print("%-9s %-15s %7.2f s  %d SSM sessions  %2d module transfers  %6d files / %10d bytes read from EFS%s"
                  % (name, leg, r["seconds"], r["ssm_sessions"], r["module_transfers"], r["efs_read"]["files"],
                     r["efs_read"]["bytes"], "  FAILED: %s" % r["error"] if r["error"] else ""), flush=True)
    (work / "efs-reads.json").write_text(json.dumps(results, indent=2))
    print("results: %s" % (work / "efs-reads.json"))
    return 0 if all(r["error"] is None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
