"""Shared fixtures. The project's module_utils are importable in tests as
ansible.module_utils.<name>, exactly as modules import them."""

from __future__ import annotations

import sys
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
