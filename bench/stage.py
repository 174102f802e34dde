"""The stage playbook in the lab (issue 5, second part): wall time of a
one-file stage and of the mixed set's stage, the SSM sessions each opened
(labd counts them), the bytes read from EFS (the lab counts them:
lab/reefguide_lab/efs_reads.py), and how the time splits, read from the
timeline line of the playbook's summary. An identical re-run of each is
measured too: it should open no session and start no instance.

The lab is moto, not S3: its transfers are moto's speed (docs/architecture.md, "The lab"),
so these figures say how the playbook spends its time, not how fast S3 is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from peers import ROOT, VENV_BIN

LABCTL = ROOT / "lab" / "labctl"
TIMELINE = re.compile(r"Timeline \(seconds from the start of the run\): (.*)$")
INTERVAL = re.compile(r"(upload|instance start|remote work) ([\d.]+)-([\d.]+)")
POINT = re.compile(r"(instance stopped at|end) ([\d.]+)")


class StageLab:
    """A lab of its own under the benchmark's work directory, stopped by
    `labctl down` (which stops moto and labd by their pids) however the
    block ends."""

    def __init__(self, directory: Path, log: Path):
        self.dir = directory
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ANSIBLE_"))}
        self.env["REEFGUIDE_LAB_DIR"] = str(directory)
        self.env["PATH"] = str(VENV_BIN) + os.pathsep + os.environ.get("PATH", "")

    def ctl(self, *args: str) -> str:
        with open(self.log, "a") as log:
            out = subprocess.run([str(LABCTL), *args], env=self.env, capture_output=True, text=True, timeout=300)
            log.write("$ labctl %s\n%s%s" % (" ".join(args), out.stdout, out.stderr))
        if out.returncode != 0:
            raise RuntimeError("labctl %s failed: %s" % (" ".join(args), (out.stderr or out.stdout).strip()[-400:]))
        return out.stdout

    def __enter__(self) -> StageLab:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.ctl("up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.ctl("down")

    def sessions(self) -> int:
        return sum(json.loads(self.ctl("status"))["sessions_started"].values())

    def module_transfers(self) -> int:
        """Module files the aws_ssm plugin sent through the bucket so far (counted by the lab)."""
        return int(json.loads(self.ctl("status")).get("ssm", {}).get("module_transfers_total") or 0)

    def efs_reads(self, reset: bool = False) -> dict:
        """The lab's count of EFS reads since its last reset (labctl efs-reads)."""
        return json.loads(self.ctl("efs-reads", *(["--reset"] if reset else [])))

    def instance_states(self) -> list[str]:
        return sorted({i["ec2_state"] for i in json.loads(self.ctl("status"))["instances"].values()})


def parse_timeline(summary: list[str]) -> dict:
    """{'upload': [start, end], 'instance start': [...], 'remote work': [...],
    'instance stopped at': t, 'end': t} from the summary's timeline line."""
    for line in summary:
        m = TIMELINE.search(line)
        if m:
            doc: dict = {k: [float(a), float(b)] for k, a, b in INTERVAL.findall(m.group(1))}
            doc.update({k: float(v) for k, v in POINT.findall(m.group(1))})
            return doc
    return {}


def summary_of(stdout: str) -> list[str]:
    """The Summary task's message from the ansible.posix.json callback."""
    try:
        plays = json.loads(stdout)["plays"]
    except (ValueError, KeyError):
        return []
    for play in plays:
        for task in play["tasks"]:
            if task["task"]["name"].endswith("Summary"):
                for host in task["hosts"].values():
                    if isinstance(host.get("msg"), list):
                        return host["msg"]
    return []


def stage_once(lab: StageLab, src: Path, dest: str, log: Path) -> dict:
    env = dict(lab.env, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    before, transfers_before = lab.sessions(), lab.module_transfers()
    lab.efs_reads(reset=True)
    argv = [str(LABCTL), "exec", "--", str(VENV_BIN / "ansible-playbook"), "stage_data.yml",
            "-e", "src=%s" % src, "-e", "dest=%s" % dest]
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    log.write_text(out.stdout + out.stderr)
    summary = summary_of(out.stdout)
    reads = lab.efs_reads()
    return {"seconds": round(seconds, 2), "ok": out.returncode == 0, "rc": out.returncode,
            "ssm_sessions": lab.sessions() - before, "instance_after": lab.instance_states(),
            "module_transfers": lab.module_transfers() - transfers_before,
            "efs_read": {"bytes": reads["bytes"], "files": reads["files"]},
            "timeline": parse_timeline(summary), "summary": summary}


def verify(lab: StageLab, src: Path, dest: str) -> Optional[str]:
    """None when the bytes on the lab's EFS equal src."""
    state = json.loads((lab.dir / "lab.json").read_text())
    fs_id = state["stacks"][state["stack_name"]]["fs_id"]
    staged = lab.dir / "efs" / fs_id / dest
    diff = subprocess.run(["diff", "-rq", str(src), str(staged)], capture_output=True, text=True)
    return None if diff.returncode == 0 else "EFS:%s differs from %s: %s" % (dest, src, diff.stdout[:300])


def measure(work: Path, cases: list[tuple[str, Path]], say: Callable[[str], None]) -> dict:
    """Each case staged fresh, then again unchanged, in one lab."""
    logs = work / "logs"
    results = {}
    with StageLab(work / "lab", logs / "stage-lab.log") as lab:
        for name, src in cases:
            dest = "data/reefguide/bench/%s" % name
            for leg in ("fresh", "unchanged"):
                log = logs / ("stage-%s-%s.log" % (name, leg))
                r = stage_once(lab, src, dest, log)
                r["error"] = None if r["ok"] else "exit %d (see %s)" % (r["rc"], log)
                if r["ok"] and leg == "fresh":
                    r["error"] = verify(lab, src, dest)
                    r["ok"] = r["error"] is None
                results["%s/%s" % (name, leg)] = r
                say("  stage  %-8s %-10s %7.2f s  %d SSM sessions  %d bytes read from EFS  instance %s%s" % (
                    name, leg, r["seconds"], r["ssm_sessions"], r["efs_read"]["bytes"], "/".join(r["instance_after"]),
                    "" if r["ok"] else "  FAILED: %s" % r["error"]))
    return {"measured": True, "cases": results}
