"""Runs one module of library/ in this Python, without the ansible CLI: its arguments
({"ANSIBLE_MODULE_ARGS": ...}) on stdin, its JSON result on stdout, exactly as the
module prints it under AnsiballZ. The project's module_utils are found as
ansible.module_utils.<name>, as AnsiballZ packs them. About 0.6 s less than
`ansible localhost -m NAME` per call (no CLI start, inventory or zip).

    python tests/module_direct.py NAME < args.json"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parent.parent
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))

from ansible.module_utils import basic  # noqa: E402

basic._ANSIBLE_ARGS = sys.stdin.buffer.read()
basic._ANSIBLE_PROFILE = "legacy"  # the JSON profile the module decodes its arguments with
runpy.run_path(str(ROOT / "library" / (sys.argv[1] + ".py")), run_name="__main__")
