"""Load figures at full size (tests/test_load.py proves the same at sizes the suite can pay for):
50,000 small files staged through the playbook in a lab of its own (fresh, identical re-run,
one file changed), and the engine's peak RSS (its VmHWM) at 5,000 and 50,000 files and for a
5 GiB file, pushed to and pulled from rclone's S3 server.

    .venv/bin/python bench/load.py [--work DIR] [--files 50000] [--memory-files 5000,50000] [--big-gib 5]
                                   [--skip-stage] [--skip-memory]

Prints the figures and writes DIR/load.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from endpoint import S3Server  # noqa: E402
from peers import base_env  # noqa: E402
from stage import StageLab, stage_once, verify  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "scripts" / "reefguide-sync"
MiB = 1024 * 1024


def small_file(root: Path, i: int) -> Path:
    """The path of small_files' file number i."""
    return root / ("d%03d" % (i // 100 % 1000)) / ("e%02d" % (i // 100000)) / ("f%06d.csv" % i)


def small_files(root: Path, count: int) -> Path:
    """count files of ~60 bytes in folders of 100."""
    for i in range(count):
        path = small_file(root, i)
        if i % 100 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"id,value\n%d,%s\n" % (i, hashlib.sha1(b"%d" % i).hexdigest().encode()))
    return root


def big_file(root: Path, mib: int) -> Path:
    """root/huge.nc of mib MiB, every MiB distinct (a counter up front)."""
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MiB)
    with open(root / "huge.nc", "wb") as fh:
        for i in range(mib):
            fh.write(i.to_bytes(8, "big") + block[8:])
    return root


def digest_tree(root: Path) -> tuple[int, str]:
    """(file count, one SHA-256 over every relative path and content, in order)."""
    h = hashlib.sha256()
    n = 0
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
            n += 1
    return n, h.hexdigest()


def engine_rss(env: dict[str, str], *args: str) -> int:
    """Peak RSS (MB) of one engine run: the largest VmHWM its own process showed, sampled every
    20 ms. Not wait4()'s ru_maxrss: Linux counts in it the RSS of the parent the child was
    forked from (a pytest worker that has run other tests: 342 MB seen), not the engine's."""
    proc = subprocess.Popen([sys.executable, str(ENGINE), *args, "--summary"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_kb = 0
    status_file = "/proc/%d/status" % proc.pid
    cmdline_file = "/proc/%d/cmdline" % proc.pid
    while proc.poll() is None:
        try:
            with open(cmdline_file, "rb") as fh:
                if str(ENGINE).encode() in fh.read():  # after the exec: the engine's own memory
                    with open(status_file) as st:
                        for line in st:
                            if line.startswith("VmHWM:"):
                                peak_kb = max(peak_kb, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("engine %s failed: %s" % (args[0], (out + err).decode()[-2000:]))
    if not peak_kb:
        raise RuntimeError("engine %s ended before its memory could be read" % args[0])
    return peak_kb // 1024


def round_trip_rss(ep: S3Server, env: dict[str, str], src: Path, dst: Path, name: str) -> tuple[int, int]:
    """(push, pull) peak RSS in MB of src -> s3://bucket/name -> dst; raises unless dst equals src."""
    url = "s3://%s/%s" % (ep.bucket, name)
    push = engine_rss(env, "push", str(src), url, "--endpoint-url", ep.url)
    pull = engine_rss(env, "pull", str(dst), url, "--endpoint-url", ep.url)
    if digest_tree(dst) != digest_tree(src):
        raise RuntimeError("%s: the pulled tree differs from the pushed one" % name)
    return push, pull


def memory(work: Path, counts: list[int], big_gib: float) -> dict:
    out: dict = {"files": {}}
    with S3Server(work / "s3", work / "logs" / "rclone.log") as ep:
        env = base_env(ep, work)
        for count in counts:
            src = small_files(work / ("src%d" % count), count)
            push, pull = round_trip_rss(ep, env, src, work / ("dst%d" % count), "n%d" % count)
            out["files"][count] = {"push_mb": push, "pull_mb": pull}
            print("%6d files: peak RSS push %d MB, pull %d MB" % (count, push, pull), flush=True)
        if len(counts) >= 2:
            lo, hi = min(counts), max(counts)
            grow = max(out["files"][hi].values()) - max(out["files"][lo].values())
            out["kb_per_file"] = round(grow * 1024 / (hi - lo), 2)
            print("%.2f KB more per file" % out["kb_per_file"], flush=True)
        if big_gib > 0:
            src = big_file(work / "big", int(big_gib * 1024))
            push, pull = round_trip_rss(ep, env, src, work / "big-back", "huge")
            out["big"] = {"gib": big_gib, "push_mb": push, "pull_mb": pull}
            print("%.1f GiB file: peak RSS push %d MB, pull %d MB" % (big_gib, push, pull), flush=True)
    return out


def stage(work: Path, files: int) -> dict:
    src = small_files(work / "stage-src", files)
    dest = "data/reefguide/load%d" % files
    out = {}
    with StageLab(work / "lab", work / "logs" / "lab.log") as lab:
        for leg in ("fresh", "identical re-run", "1 file changed"):
            if leg == "1 file changed":
                small_file(src, files // 2).write_bytes(b"changed\n")
            r = stage_once(lab, src, dest, work / "logs" / ("stage-%s.log" % leg.replace(" ", "-")))
            error = verify(lab, src, dest) if r["ok"] else "exit %d" % r["rc"]
            out[leg] = {"seconds": r["seconds"], "ssm_sessions": r["ssm_sessions"],
                        "instance_after": r["instance_after"], "error": error}
            print("%d files, %-16s %8.1f s  %d SSM sessions  instance %s%s"
                  % (files, leg, r["seconds"], r["ssm_sessions"], "/".join(r["instance_after"]),
                     "  FAILED: %s" % error if error else ""), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--files", type=int, default=50000, help="files of the staged tree")
    ap.add_argument("--memory-files", default="5000,50000", help="file counts of the memory legs")
    ap.add_argument("--big-gib", type=float, default=5.0, help="size of the one big file (0: none)")
    ap.add_argument("--skip-stage", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="reefguide-load-"))).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if not args.skip_memory:
        results["memory"] = memory(work, [int(c) for c in args.memory_files.split(",") if c], args.big_gib)
    if not args.skip_stage:
        results["stage"] = stage(work, args.files)
    (work / "load.json").write_text(json.dumps(results, indent=2))
    print("results: %s" % (work / "load.json"))
    return 0 if all(r["error"] is None for r in results.get("stage", {}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
