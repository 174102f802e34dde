"""Shared fixtures. The project's module_utils are importable in tests as
ansible.module_utils.<name>, exactly as modules import them."""

from __future__ import annotations

import sys
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


import pytest  # noqa: E402

from lab import running_lab  # noqa: E402


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """One lab for the whole test session, in its own directory (a user's
    `make demo` lab in .lab/ is left alone); brought down at the end."""
    with running_lab(tmp_path_factory.mktemp("lab")) as lab:
        yield lab
