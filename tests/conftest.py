"""Shared fixtures. The project's module_utils are importable in tests as
ansible.module_utils.<name>, exactly as modules import them."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Registers the 'full' marker (set in pytest_collection_modifyitems).

    Under pytest-xdist each worker gets a TMPDIR of its own: runs write their
    progress files (named per host and run) and unpack archives in $TMPDIR: each worker's own
    keeps its files apart and lets a test find its run's."""
    config.addinivalue_line("markers", "full: needs a lab, a server or the instance's Python: make test only")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="reefguide-efs-%s-" % worker)
        tempfile.tempdir = None  # recomputed from the new TMPDIR


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ["TMPDIR"].startswith(str(Path("/tmp"))):
        shutil.rmtree(os.environ["TMPDIR"], ignore_errors=True)

from lab import running_lab  # noqa: E402

# Files only `make test` runs: their fixtures bring up labs of their own (running_lab,
# Lab(...)), start S3 servers, make mount namespaces, or run modules with the instance's
# Python through the ansible CLI. Every other test needs none of that: `make test-quick`.
FULL_ONLY_FILES = {
    "test_faults.py", "test_iam.py", "test_idle_timeout.py", "test_interruptions.py", "test_lab.py",
    "test_live_record.py", "test_lock_heartbeat.py", "test_molecule.py", "test_run_isolation.py",
    "test_ssm_limits.py", "test_workers.py", "test_load.py",
    "test_s3_sync.py", "test_sync_interrupt.py", "test_efs_mount.py", "test_efs_tidy.py",
    "test_efs_release.py", "test_release_prune.py", "test_release_in_place.py", "test_session_cuts.py",
}


# The longest files first (seconds of one process in a fresh-clone run at the machine's half speed,
# 2026-12-07, s12b). pytest-xdist hands a file to a process as a whole (--dist loadfile), in
# collection order when scripts/test.sh says --no-loadscope-reorder (by default it sorts files by
# their number of tests, which sent the one-test property file out last, to run on alone at the end).
LONGEST_FIRST = [
    "test_interruptions.py", "test_live_record_property.py", "test_molecule.py", "test_live_record.py",  # 880-625 s
    "test_workers.py", "test_stage_playbook.py", "test_stage_reads.py", "test_session_cuts.py", "test_load.py",
    "test_faults.py", "test_idle_timeout.py", "test_iam.py", "test_lab.py", "test_bad_input.py",
    "test_lock_heartbeat.py", "test_status.py",  # 385-90 s
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark 'full' every test of FULL_ONLY_FILES, of a file that brings up a lab of its own
    (imports running_lab), and every test that takes the session's `lab`: `make test-quick`
    runs the others (-m "not full"). Then put the longest files first (LONGEST_FIRST), each
    file's tests in their order."""
    for item in items:
        own_lab = getattr(getattr(item, "module", None), "running_lab", None) is running_lab
        if item.path.name in FULL_ONLY_FILES or own_lab or "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.full)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """One lab for the whole test session, in its own directory (a user's
    `make demo` lab in .lab/ is left alone); brought down at the end."""
    with running_lab(tmp_path_factory.mktemp("lab")) as lab:
        yield lab


@pytest.fixture(autouse=True)
def _the_shared_lab_starts_stopped(request):
    """Every test that takes the session's `lab` finds its instance stopped, as a user's deployment
    is between runs, whatever the test before it left (test_lab's leave it running)."""
    if "lab" in request.fixturenames:
        lab = request.getfixturevalue("lab")
        if lab.supervisor()["instances"].get(lab.instance_id, {}).get("ec2_state") in ("pending", "running"):
            lab.stop_instance()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """REEFGUIDE_TEST_CPU=file: append each test's CPU (its own and its waited-for children's) to file."""
    out = os.environ.get("REEFGUIDE_TEST_CPU")
    if not out:
        yield
        return
    import resource
    import time
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    t0 = time.time()
    yield
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = [a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before)]
    with open(out, "a") as fh:
        fh.write("%.1f\t%.1f\t%.1f\t%s\n" % (time.time() - t0, cpu[0], cpu[1], item.nodeid))
