"""Figures and output of the benchmark: per cell (data set, leg, tool) the
median wall time with min and max, peak RSS; ours divided by each peer in
the same invocation; issue 5's targets marked met or missed. Written as
latest.json (everything, every run) and latest.md (the tables)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Optional

OURS, ANSIBLE = "ours", "ours-ansible"
EXTERNAL = ("aws", "s5cmd", "rclone")
LEG_LABELS = {
    "push": "push",
    "push-noop": "push, no-op re-sync",
    "push-change": "push, 1 file changed",
    "pull": "pull",
    "pull-noop": "pull, no-op re-sync",
    "pull-change": "pull, 1 file changed",
}
SET_ORDER = ("small", "large", "mixed")
LEG_ORDER = tuple(LEG_LABELS)
RSS_LIMIT_MB = 200.0


# -- the machine


def machine() -> dict:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(_mem_total_kib() / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


# -- figures


def cells(runs: list[dict]) -> list[dict]:
    """One entry per (set, leg, peer): median/min/max seconds over the runs
    that succeeded, the largest peak RSS, failures."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["set"], r["leg"], r["peer"]), []).append(r)
    out = []
    for (set_name, leg, peer), group in sorted(groups.items(), key=lambda kv: _cell_order(kv[0])):
        ok = [r for r in group if r["ok"]]
        secs = [r["seconds"] for r in ok]
        out.append({
            "set": set_name,
            "leg": leg,
            "peer": peer,
            "runs": len(group),
            "ok": len(ok),
            "median": round(statistics.median(secs), 4) if secs else None,
            "min": round(min(secs), 4) if secs else None,
            "max": round(max(secs), 4) if secs else None,
            "peak_rss_mb": round(max(r["maxrss_kb"] for r in ok) / 1024, 1) if ok else None,
            "errors": [r["error"] for r in group if not r["ok"]],
        })
    return out


def _cell_order(key: tuple[str, str, str]) -> tuple:
    set_name, leg, peer = key
    peer_order = EXTERNAL + (OURS, ANSIBLE)
    return (_index(SET_ORDER, set_name), _index(LEG_ORDER, leg), _index(peer_order, peer), peer)


def _index(seq: tuple, item: str) -> int:
    return seq.index(item) if item in seq else len(seq)


def medians(cell_list: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    table: dict[tuple[str, str], dict[str, float]] = {}
    for c in cell_list:
        if c["median"] is not None:
            table.setdefault((c["set"], c["leg"]), {})[c["peer"]] = c["median"]
    return table


def ratios(cell_list: list[dict]) -> list[dict]:
    """ours / peer (medians of this invocation; < 1: ours is faster), the
    fastest external peer, and what going through Ansible adds."""
    out = []
    for (set_name, leg), med in medians(cell_list).items():
        if OURS not in med:
            continue
        peers = {p: med[p] for p in EXTERNAL if p in med}
        row = {"set": set_name, "leg": leg, "ours": med[OURS],
               "ours_over": {p: round(med[OURS] / t, 3) for p, t in peers.items() if t > 0}}
        if peers:
            fastest = min(peers, key=peers.get)
            row["fastest_peer"] = fastest
            row["ours_over_fastest"] = round(med[OURS] / peers[fastest], 3) if peers[fastest] > 0 else None
        if ANSIBLE in med:
            row["ansible_minus_engine_s"] = round(med[ANSIBLE] - med[OURS], 3)
        out.append(row)
    return out


def targets(cell_list: list[dict]) -> list[dict]:
    """Issue 5's targets, cell by cell, for ours (the engine) against the
    peers measured in this invocation."""
    med = medians(cell_list)
    rss = {(c["set"], c["leg"], c["peer"]): c["peak_rss_mb"] for c in cell_list}
    out = []
    for (set_name, leg), m in sorted(med.items(), key=lambda kv: _cell_order(kv[0] + ("",))):
        if OURS not in m:
            continue
        ours = m[OURS]
        peers = {p: m[p] for p in EXTERNAL if p in m}
        if peers and leg in ("push", "pull"):
            fastest = min(peers, key=peers.get)
            factor = 1.3 if set_name == "small" else 1.0
            out.append(_target("%s: ours <= %s x fastest peer" % (leg, factor), set_name, leg, ours,
                               factor * peers[fastest], fastest))
            if "aws" in peers:
                out.append(_target("%s: ours <= aws s3 sync" % leg, set_name, leg, ours, peers["aws"], "aws"))
        if peers and leg in ("push-noop", "pull-noop"):
            fastest = min(peers, key=peers.get)
            out.append(_target("no-op: ours <= fastest peer's no-op", set_name, leg, ours, peers[fastest], fastest))
        if leg in ("push-change", "pull-change"):
            noop = med.get((set_name, leg.replace("change", "noop")), {}).get(OURS)
            if noop is not None:
                out.append({"target": "1-file change vs ours' no-op (informative)", "set": set_name, "leg": leg,
                            "ours": ours, "reference": noop, "reference_is": "ours' no-op",
                            "status": "+%.2f s" % (ours - noop)})
        peak = rss.get((set_name, leg, OURS))
        if set_name == "large" and leg in ("push", "pull") and peak is not None:
            out.append({"target": "peak RSS < %d MB moving 256 MiB files" % RSS_LIMIT_MB, "set": set_name,
                        "leg": leg, "ours": peak, "reference": RSS_LIMIT_MB, "reference_is": "MB",
                        "status": "met" if peak < RSS_LIMIT_MB else "missed"})
    return out


def _target(name: str, set_name: str, leg: str, ours: float, limit: float, peer: str) -> dict:
    return {"target": name, "set": set_name, "leg": leg, "ours": ours, "reference": round(limit, 4),
            "reference_is": peer, "status": "met" if ours <= limit else "missed"}


def build(runs: list[dict], sets: dict, peers: list[dict], settings: dict, notes: list[str],
          stage_playbook: dict) -> dict:
    cell_list = cells(runs)
    return {
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "settings": settings,
        "tools": peers,
        "data_sets": sets,
        "cells": cell_list,
        "ratios": ratios(cell_list),
        "targets": targets(cell_list),
        "stage_playbook": stage_playbook,
        "notes": notes,
        "runs": runs,
    }


# -- markdown


def fmt_s(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return "%.2f" % x if x >= 1 else "%.3f" % x


def fmt_cell(c: Optional[dict]) -> str:
    if c is None:
        return ""
    if c["median"] is None:
        if c["errors"] and all("was not updated" in e for e in c["errors"]):
            return "missed the change"  # compares size and time only; the file kept its size
        return "failed"
    text = fmt_s(c["median"])
    if c["runs"] > 1:
        text += " (%s–%s)" % (fmt_s(c["min"]), fmt_s(c["max"]))
    if c["ok"] < c["runs"]:
        text += " [%d failed]" % (c["runs"] - c["ok"])
    return text


def markdown(doc: dict) -> str:
    m, s = doc["machine"], doc["settings"]
    peers = [p["name"] for p in doc["tools"]]
    labels = {p["name"]: p["label"] for p in doc["tools"]}
    by_key = {(c["set"], c["leg"], c["peer"]): c for c in doc["cells"]}
    rows = sorted({(c["set"], c["leg"]) for c in doc["cells"]}, key=lambda k: _cell_order(k + ("",)))
    lines = [
        "# Benchmark: ours against aws s3 sync, s5cmd and rclone",
        "",
        "%s, `%s`, %d run(s) per cell, %s in all." % (
            doc["generated"], s["command"], s["repeat"], _duration(s["total_seconds"])),
        "",
        "- Machine: %s, %d cores, %.1f GiB, %s, Linux %s, Python %s." % (
            m["cpu_model"], m["cores"], m["memory_gib"], m["os"], m["kernel"], m["python"]),
        "- Endpoint: %s. CPU pinning: %s." % (s["endpoint"].split(", serving")[0], s["pinning"]),
        "- Data (%s scale): %s." % (s["scale"], "; ".join(
            "%s %s" % (name, d["describe"]) for name, d in doc["data_sets"].items())),
        "- Tools: %s." % "; ".join("%s: %s" % (p["label"], p["version"]) for p in doc["tools"]),
        "",
        "## Wall time, seconds: median (min–max)",
        "",
        "| set | leg | %s |" % " | ".join(labels[p] for p in peers),
        "|---|---|" + "---|" * len(peers),
    ]
    for set_name, leg in rows:
        lines.append("| %s | %s | %s |" % (set_name, LEG_LABELS.get(leg, leg),
                                           " | ".join(fmt_cell(by_key.get((set_name, leg, p))) for p in peers)))
    ratio_rows = doc["ratios"]
    ext = [p for p in EXTERNAL if p in peers]
    if ratio_rows and ext:
        lines += ["", "## Ours ÷ peer (medians of this run; below 1 ours is faster)", "",
                  "| set | leg | %s | ÷ fastest peer | ansible − engine, s |" % " | ".join("÷ " + p for p in ext),
                  "|---|---|" + "---|" * len(ext) + "---|---|"]
        for r in ratio_rows:
            lines.append("| %s | %s | %s | %s | %s |" % (
                r["set"], LEG_LABELS.get(r["leg"], r["leg"]),
                " | ".join(_ratio(r["ours_over"].get(p)) for p in ext),
                "%s (%s)" % (_ratio(r.get("ours_over_fastest")), r.get("fastest_peer", "")),
                "%+.2f" % r["ansible_minus_engine_s"] if "ansible_minus_engine_s" in r else ""))
    lines += ["", "## Peak RSS, MB (largest of the runs)", "",
              "| set | leg | %s |" % " | ".join(labels[p] for p in peers),
              "|---|---|" + "---|" * len(peers)]
    for set_name, leg in rows:
        lines.append("| %s | %s | %s |" % (set_name, LEG_LABELS.get(leg, leg), " | ".join(
            _rss(by_key.get((set_name, leg, p))) for p in peers)))
    if doc["targets"]:
        lines += ["", "## Issue 5 targets (ours = the engine)", "", "| target | set | leg | ours | limit | status |",
                  "|---|---|---|---|---|---|"]
        for t in doc["targets"]:
            unit = " MB" if t["reference_is"] == "MB" else ""
            ref = "%s%s" % (fmt_s(t["reference"]), unit) if unit else "%s (%s)" % (fmt_s(t["reference"]),
                                                                                   t["reference_is"])
            lines.append("| %s | %s | %s | %s%s | %s | **%s** |" % (
                t["target"], t["set"], LEG_LABELS.get(t["leg"], t["leg"]), fmt_s(t["ours"]), unit, ref, t["status"]))
    lines += stage_section(doc["stage_playbook"])
    lines += ["", "## How it is measured", ""] + [
        "- Every run is a fresh process; wall time runs from spawn to exit (start-up included).",
        "- Peak RSS is `ru_maxrss` from `wait4()` on the tool's process: the largest resident set of that "
        "process or of any descendant it waited for (not their sum; for `ansible` the controller, its "
        "worker and the module process). Linux also carries the parent's own peak into a child's figure, "
        "so no RSS here is below the harness's %.0f MB." % (s["harness_peak_rss_kb"] / 1024),
        "- Tools run in turn, leg by leg, their order rotated each repetition; all with default settings, "
        "against the same `rclone serve s3` and the same data (read from the page cache).",
        "- push: to a fresh prefix; pull: into a fresh directory, from a prefix written by %s; no-op: the same "
        "sync again onto the synced destination; 1 file changed: one %s of the mixed set rewritten "
        "(same size, newer mtime) before each tool's turn (for pulls, re-pushed to the source first, untimed)."
        % (_seed_writer(doc), _change_size(doc)),
        "- Our engine keeps its checksum cache per destination: cold for a push or pull, warm for its "
        "no-op and change re-syncs. Pulls of the other tools skip the engine's manifest object.",
        "- \"missed the change\": the tool exited 0 but left the old content (it compares size and "
        "modification time only, and the changed file kept its size).",
        "- After every push, one untimed listing of what it wrote: `rclone serve s3` works out the MD5 "
        "ETag of an object uploaded in parts at its first listing (about 1.5 s per GiB here), a one-off "
        "server cost that would otherwise land on the next tool to list, i.e. on the no-op re-sync of the "
        "tool just measured (S3 stores the ETag at upload; rclone's client avoids it by storing an "
        "md5chksum).",
        "- After each run the harness checks what it wrote (file count and bytes, or the changed file's "
        "SHA-256) and calls sync(2) so the next run does not pay for its write-back.",
    ]
    if not doc["stage_playbook"].get("measured"):
        lines.append("- Not measured here: %s." % doc["stage_playbook"]["reason"])
    for note in doc["notes"]:
        lines.append("- Note: %s." % note)
    return "\n".join(lines) + "\n"


def stage_section(stage: dict) -> list[str]:
    """The stage playbook in the lab: wall time, SSM sessions, and the
    timeline the playbook's summary printed."""
    if not stage.get("measured"):
        return []
    lines = ["", "## stage_data.yml in the lab (moto S3, namespace instance, SSM over labd)", "",
             "| data | run | wall, s | SSM sessions | read from EFS | instance after | upload | instance start "
             "| remote work | instance stopped at | end |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in stage["cases"].items():
        name, leg = key.split("/")
        t = r.get("timeline", {})

        def span(k: str, t: dict = t) -> str:
            return "%.1f–%.1f" % tuple(t[k]) if k in t else "–"

        read = r.get("efs_read")
        lines.append("| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            name, leg, "%.2f" % r["seconds"] if r["ok"] else "failed: %s" % r["error"], r["ssm_sessions"],
            "%d files, %d bytes" % (read["files"], read["bytes"]) if read else "–",
            "/".join(r["instance_after"]), span("upload"), span("instance start"), span("remote work"),
            "%.1f" % t["instance stopped at"] if "instance stopped at" in t else "–",
            "%.1f" % t["end"] if "end" in t else "–"))
    lines += ["", "Intervals are seconds from the start of the run, as the playbook's summary prints them "
              "(the upload overlaps the instance start). Transfers here run at moto's speed, not S3's: "
              "the table shows where a run spends its time, not how fast S3 is."]
    return lines


def _ratio(x: Optional[float]) -> str:
    return "–" if x is None else "%.2f" % x


def _rss(c: Optional[dict]) -> str:
    return "" if c is None or c["peak_rss_mb"] is None else "%.0f" % c["peak_rss_mb"]


def _duration(seconds: float) -> str:
    return "%d min %02d s" % divmod(int(round(seconds)), 60) if seconds >= 60 else "%.0f s" % seconds


def _seed_writer(doc: dict) -> str:
    writers = {d.get("pull_source_written_by") for d in doc["data_sets"].values()} - {None}
    return ", ".join(sorted(writers)) or "our engine"


def _change_size(doc: dict) -> str:
    mixed = doc["data_sets"].get("mixed")
    return "file (%s)" % mixed["change_target"] if mixed and mixed.get("change_target") else "file"


def write(doc: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / "latest.md", out / "latest.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    md_path.write_text(markdown(doc))
    return md_path, json_path
