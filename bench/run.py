#!/usr/bin/env python3
"""reefguide-efs benchmark (issue 5): our S3 sync against aws s3 sync, s5cmd
and rclone on the same loopback endpoint and the same data.

    .venv/bin/python bench/run.py                  # what `make bench` runs
    .venv/bin/python bench/run.py --quick          # tiny sets, 1 repetition
    .venv/bin/python bench/run.py --sets mixed --legs push,noop --peers rclone,ours --repeat 5

Per data set: one `rclone serve s3` (endpoint.py), the set generated or taken
from the cache (datasets.py), then for each repetition every leg is run by
every tool in turn, the tools' order rotated by one each repetition. Each run
is a fresh process; its wall time and peak RSS (wait4) are recorded, and what
it wrote is checked (file count and bytes, or the changed file's SHA-256).
Results: bench/results/latest.md and latest.json (report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets  # noqa: E402
import report  # noqa: E402
import stage  # noqa: E402
from endpoint import BUCKET, S3Server  # noqa: E402
from peers import OURS, PEERS, ROOT, Endpoint, Peer, Target, base_env, failed_ansible_result, rclone_binary  # noqa: E402

SETS = ("small", "large", "mixed")
LEGS = ("push", "push-noop", "push-change", "pull", "pull-noop", "pull-change")
LEG_GROUPS = {
    "all": LEGS,
    "noop": ("push-noop", "pull-noop"),
    "change": ("push-change", "pull-change"),
}


@dataclass
class Run:
    set: str
    leg: str
    peer: str
    rep: int
    position: int  # the peer's place in this repetition's order (0 = first)
    seconds: float
    maxrss_kb: int
    ok: bool
    error: Optional[str] = None
    detail: dict = field(default_factory=dict)


@dataclass
class Context:
    work: Path  # .bench: data cache, server scratch, destinations, logs
    scale: str  # full | quick
    repeat: int
    sets: list[str]
    legs: list[str]
    peers: list[Peer]
    client_cpu: Optional[int]
    server_cpu: Optional[int]
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    change_generation: int = 0
    skip_stage: bool = False
    ep: Optional[Endpoint] = None  # the current data set's server
    env: dict[str, str] = field(default_factory=dict)  # and the environment of every run against it

    @property
    def logs(self) -> Path:
        return self.work / "logs"


# -- one measured process


class Measured:
    """Outcome of one process: wall time from spawn to reaped, peak RSS."""

    def __init__(self, seconds: float, maxrss_kb: int, rc: int, stdout: str, stderr: str):
        self.seconds, self.maxrss_kb, self.rc = seconds, maxrss_kb, rc
        self.stdout, self.stderr = stdout, stderr


def measure(argv: list[str], env: dict[str, str], log_stem: Path, cwd: Optional[Path] = None,
            cpu: Optional[int] = None) -> Measured:
    """Run argv as a fresh process, output to log files. Peak RSS is the
    ru_maxrss that wait4() returns for the child: the largest resident set of
    the child or of any descendant it waited for (not their sum)."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv  # taskset execs argv: same pid
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            stop_child(proc)
            raise
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(seconds, usage.ru_maxrss, proc.returncode, out_path.read_text(errors="replace"),
                    err_path.read_text(errors="replace"))


def stop_child(proc: subprocess.Popen) -> None:
    """Stop a run interrupted by Ctrl-C or SIGTERM, by its pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- a run of one tool, recorded or not


def run_tool(ctx: Context, ds: datasets.DataSet, leg: str, peer: Peer, rep: int,
             position: int, target: Target, check, record: bool) -> Run:
    """One sync by one tool. check() returns an error text or None once the
    tool has exited. record=False: a set-up run (e.g. the push a no-op leg
    needs when the push leg itself was not asked for)."""
    stem = ctx.logs / ("%s-%s-r%d-%s" % (ds.name, leg, rep, peer.name))
    m = measure(peer.argv(target, ctx.ep), ctx.env, stem, cwd=peer.cwd, cpu=ctx.client_cpu)
    os.sync()  # the next run starts with no dirty pages of this one to write back
    error = None
    if m.rc != 0:
        error = "exit %d: %s" % (m.rc, tail(m.stderr or m.stdout))
    elif peer.name == "ours-ansible":
        error = failed_ansible_result(m.stdout)
    if error is None:
        error = check()
    run = Run(ds.name, leg, peer.name, rep, position, round(m.seconds, 4), m.maxrss_kb, error is None, error,
              engine_detail(m.stdout) if peer.name == OURS else {})
    if record:
        ctx.runs.append(run)
    say("  %-6s %-12s %-13s %8.3f s %6.0f MB%s%s" % (
        ds.name, leg, peer.name, m.seconds, m.maxrss_kb / 1024, "" if record else "  (set-up, not recorded)",
        "" if error is None else "  FAILED: " + error))
    return run


def engine_detail(stdout: str) -> dict:
    """A few figures from our engine's JSON result (what it hashed, sent)."""
    try:
        result = json.loads(stdout)
    except ValueError:
        return {}
    return {
        "transferred_files": result.get("transferred", {}).get("files"),
        "hashed_files": result.get("hashed", {}).get("files"),
        "requests": sum((result.get("requests") or {}).values()),
    }


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[:600]


# -- checks of what a run wrote


def check_tree(root: Path, ds: datasets.DataSet):
    def check() -> Optional[str]:
        got = datasets.tree_stats(root) if root.is_dir() else (0, 0)
        want = (ds.count, ds.total_bytes)
        return None if got == want else "%s holds %d files, %d bytes; expected %d, %d" % ((root,) + got + want)

    return check


def check_same(src: Path, dst: Path):
    def check() -> Optional[str]:
        if not dst.is_file():
            return "%s is missing" % dst
        return None if datasets.sha256_of(src) == datasets.sha256_of(dst) else "%s was not updated" % dst

    return check


def no_check() -> Optional[str]:
    return None


# -- legs


def rotated(peers: list[Peer], rep: int) -> list[Peer]:
    k = rep % len(peers)
    return peers[k:] + peers[:k]


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def warm_listing(ctx: Context, prefix: str) -> None:
    """One untimed listing of what was just written. rclone serve s3 works out
    the MD5 ETag of an object uploaded in parts at its first listing (~1.5 s
    per GiB here): the server's one-off cost, paid by whichever tool lists
    next, not by the tool being measured (on S3 the ETag is stored at upload).
    rclone's own client never triggers it: it stores an md5chksum with the
    object. Listed by a child process (`rclone lsf`): a library loaded here
    would raise the harness's own peak RSS, which Linux carries into every
    child's figure."""
    subprocess.run([str(rclone_binary()), "lsf", "-R", "--format", "pst", "bench:%s/%s" % (BUCKET, prefix)],
                   env=ctx.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def push_legs(ctx: Context, ds: datasets.DataSet, root: Path, scratch: Path, rep: int) -> None:
    """push to a fresh prefix, then the no-op re-push, then the one-file
    change re-push (mixed), each leg run by every tool in turn."""
    order = rotated(ctx.peers, rep)
    prefix = {p.name: "push/%s-r%d-%s" % (ds.name, rep, p.name) for p in order}
    state = {p.name: ctx.work / "state" / ("push-%s-r%d-%s.json" % (ds.name, rep, p.name)) for p in order}
    for i, p in enumerate(order):
        state[p.name].unlink(missing_ok=True)  # a first push hashes everything
        run_tool(ctx, ds, "push", p, rep, i, Target("push", root, prefix[p.name], state[p.name]),
                 check_tree(scratch / BUCKET / prefix[p.name], ds), "push" in ctx.legs)
        warm_listing(ctx, prefix[p.name])
    if "push-noop" in ctx.legs:
        for i, p in enumerate(order):
            run_tool(ctx, ds, "push-noop", p, rep, i, Target("push", root, prefix[p.name], state[p.name]),
                     no_check, True)
    if "push-change" in ctx.legs and ds.change_target:
        for i, p in enumerate(order):
            rel = datasets.modify(ds, root, next_generation(ctx))
            run_tool(ctx, ds, "push-change", p, rep, i, Target("push", root, prefix[p.name], state[p.name]),
                     check_same(root / rel, scratch / BUCKET / prefix[p.name] / rel), True)
            warm_listing(ctx, prefix[p.name])
    for p in order:
        shutil.rmtree(scratch / BUCKET / prefix[p.name], ignore_errors=True)


def pull_legs(ctx: Context, ds: datasets.DataSet, root: Path, seed: Target, rep: int) -> None:
    """pull the seed prefix into a fresh directory, then the no-op re-pull,
    then the one-file change re-pull (the seed re-pushed with one file
    modified before each tool's turn, untimed)."""
    order = rotated(ctx.peers, rep)
    dest = {p.name: fresh(ctx.work / "pull" / ("%s-r%d-%s" % (ds.name, rep, p.name))) for p in order}
    state = {p.name: ctx.work / "state" / ("pull-%s-r%d-%s.json" % (ds.name, rep, p.name)) for p in order}
    for i, p in enumerate(order):
        state[p.name].unlink(missing_ok=True)
        run_tool(ctx, ds, "pull", p, rep, i, Target("pull", dest[p.name], seed.prefix, state[p.name]),
                 check_tree(dest[p.name], ds), "pull" in ctx.legs)
    if "pull-noop" in ctx.legs:
        for i, p in enumerate(order):
            run_tool(ctx, ds, "pull-noop", p, rep, i, Target("pull", dest[p.name], seed.prefix, state[p.name]),
                     no_check, True)
    if "pull-change" in ctx.legs and ds.change_target:
        for i, p in enumerate(order):
            rel = datasets.modify(ds, root, next_generation(ctx))
            push_seed(ctx, ds, seed)
            run_tool(ctx, ds, "pull-change", p, rep, i, Target("pull", dest[p.name], seed.prefix,
                                                                     state[p.name]),
                     check_same(root / rel, dest[p.name] / rel), True)
    for p in order:
        shutil.rmtree(dest[p.name], ignore_errors=True)


def next_generation(ctx: Context) -> int:
    ctx.change_generation += 1
    return ctx.change_generation


def seed_tool(ctx: Context) -> Peer:
    """Pulls read a prefix written by our engine (with its manifest), as in
    the product; rclone writes it when our engine cannot run."""
    return PEERS[OURS] if PEERS[OURS].missing() is None else PEERS["rclone"]


def push_seed(ctx: Context, ds: datasets.DataSet, seed: Target) -> None:
    tool = seed_tool(ctx)
    run = run_tool(ctx, ds, "seed", tool, 0, 0, seed, no_check, False)
    if not run.ok:
        raise RuntimeError("could not write the pull source s3://%s/%s with %s: %s"
                           % (BUCKET, seed.prefix, tool.name, run.error))
    warm_listing(ctx, seed.prefix)


def run_set(ctx: Context, name: str) -> dict:
    ds = datasets.data_set(name, ctx.scale)
    root = datasets.ensure(ds, ctx.work / "data", log=say)
    scratch = fresh(ctx.work / "s3" / name)
    wants_push = any(leg.startswith("push") for leg in ctx.legs)
    wants_pull = any(leg.startswith("pull") for leg in ctx.legs)
    with S3Server(scratch, ctx.logs / ("server-%s.log" % name), ctx.server_cpu) as ep:
        ctx.ep, ctx.env = ep, base_env(ep, ctx.work)
        seed = Target("push", root, "seed/%s" % name, ctx.work / "state" / ("seed-%s.json" % name))
        if wants_pull:
            seed.state.unlink(missing_ok=True)
            push_seed(ctx, ds, seed)
        for rep in range(ctx.repeat):
            say("[%s] repetition %d/%d, order: %s" % (name, rep + 1, ctx.repeat,
                                                     ", ".join(p.name for p in rotated(ctx.peers, rep))))
            if wants_push:
                push_legs(ctx, ds, root, scratch, rep)
            if wants_pull:
                pull_legs(ctx, ds, root, seed, rep)
    datasets.restore(ds, root)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"files": ds.count, "bytes": ds.total_bytes, "describe": ds.describe(),
            "change_target": ds.change_target, "pull_source_written_by": seed_tool(ctx).name if wants_pull else None}


def stage_playbook_in_lab(ctx: Context) -> dict:
    """stage_data.yml in a lab of its own: one file, then the mixed set."""
    if ctx.skip_stage:
        return {"measured": False, "reason": "the stage playbook leg was skipped (--no-stage)"}
    ds = datasets.data_set("mixed", ctx.scale)
    mixed = datasets.ensure(ds, ctx.work / "data", log=say)
    one = fresh(ctx.work / "stage-one")
    one.mkdir()
    shutil.copy2(mixed / "config.toml", one / "config.toml")
    say("[stage] stage_data.yml in the lab: one file, then the mixed set (%s)" % ds.describe())
    return stage.measure(ctx.work, [("one-file", one), ("mixed", mixed)], say)


# -- command line


def say(text: str) -> None:
    print(text, flush=True)


def parse_list(text: str, allowed: tuple[str, ...], what: str, groups: Optional[dict] = None) -> list[str]:
    chosen: list[str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        expanded = (groups or {}).get(item, (item,))
        for name in expanded:
            if name not in allowed:
                raise SystemExit("unknown %s %r; choose from %s" % (what, name, ", ".join(
                    list(allowed) + list(groups or {}))))
            if name not in chosen:
                chosen.append(name)
    return [name for name in allowed if name in chosen]  # canonical order


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small data sets and 1 repetition (smoke runs)")
    p.add_argument("--sets", default=",".join(SETS), help="data sets: small,large,mixed")
    p.add_argument("--legs", default="all",
                   help="legs: push,push-noop,push-change,pull,pull-noop,pull-change, or the groups "
                        "noop, change, all (change legs apply to the mixed set)")
    p.add_argument("--peers", default=",".join(PEERS), help="tools: %s" % ",".join(PEERS))
    p.add_argument("--repeat", type=int, help="runs per cell (default 3; 1 with --quick)")
    p.add_argument("--no-stage", action="store_true", help="skip the stage playbook in the lab")
    p.add_argument("--pin", action="store_true",
                   help="pin the S3 server to CPU 0 and every client to CPU 1 (taskset)")
    p.add_argument("--out", type=Path, help="where latest.md and latest.json go "
                                            "(default bench/results; .bench/results-quick with --quick)")
    p.add_argument("--work", type=Path, default=ROOT / ".bench",
                   help="scratch: data cache, server directory, destinations, logs (default .bench)")
    args = p.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def choose_peers(names: list[str], notes: list[str]) -> list[Peer]:
    peers = []
    for name in names:
        why = PEERS[name].missing()
        if why:
            notes.append("%s skipped: %s" % (PEERS[name].label, why))
            say("skipping %s: %s" % (name, why))
        else:
            peers.append(PEERS[name])
    return peers


def pinning(args: argparse.Namespace, notes: list[str]) -> tuple[Optional[int], Optional[int], str]:
    if not args.pin:
        return None, None, "none: server and clients share all cores"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        notes.append("--pin ignored: needs 2 CPUs and taskset")
        return None, None, "none (--pin asked, but needs 2 CPUs and taskset)"
    return cpus[0], cpus[1], "server on CPU %d, clients on CPU %d (taskset)" % (cpus[0], cpus[1])


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: servers and runs stopped by pid
    notes: list[str] = []
    peers = choose_peers(parse_list(args.peers, tuple(PEERS), "peer"), notes)
    if not peers:
        raise SystemExit("no tool can run: %s" % "; ".join(notes))
    server_cpu, client_cpu, pin_text = pinning(args, notes)
    work = args.work.resolve()
    for sub in ("s3", "pull", "state", "logs", "xdg-cache"):
        fresh(work / sub)
        (work / sub).mkdir(parents=True)
    ctx = Context(work, "quick" if args.quick else "full", args.repeat, parse_list(args.sets, SETS, "set"),
                  parse_list(args.legs, LEGS, "leg", LEG_GROUPS), peers, client_cpu, server_cpu, notes=notes,
                  skip_stage=args.no_stage)
    started = time.monotonic()
    sets = {}
    for name in ctx.sets:
        sets[name] = run_set(ctx, name)
    elapsed = time.monotonic() - started
    doc = report.build(
        runs=[asdict(r) for r in ctx.runs],
        sets=sets,
        peers=[{"name": p.name, "label": p.label, "version": p.version()} for p in ctx.peers],
        settings={"scale": ctx.scale, "repeat": ctx.repeat, "legs": ctx.legs, "pinning": pin_text,
                  "endpoint": "rclone serve s3 on 127.0.0.1 (path style), serving %s" % (work / "s3"),
                  "harness_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "command": " ".join([Path(sys.executable).name, "bench/run.py"] + (argv or sys.argv[1:])),
                  "total_seconds": round(elapsed, 1)},
        notes=ctx.notes,
        stage_playbook=stage_playbook_in_lab(ctx),
    )
    out = args.out or (work / "results-quick" if args.quick else ROOT / "bench" / "results")
    md_path, json_path = report.write(doc, out)
    say("")
    say(md_path.read_text())
    say("wrote %s and %s (%.0f s)" % (md_path, json_path, elapsed))
    stage_ok = all(r["ok"] for r in doc["stage_playbook"].get("cases", {}).values())
    # A peer that misses a same-size change is a finding, not a harness failure.
    return 0 if stage_ok and all(r.ok for r in ctx.runs if r.peer.startswith(OURS)) else 1


if __name__ == "__main__":
    sys.exit(main())
