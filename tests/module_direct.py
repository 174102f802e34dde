"""Runs one module of library/ in this Python, without the ansible CLI: its arguments
({"ANSIBLE_MODULE_ARGS": ...}) on stdin, its JSON result on stdout, exactly as the
module prints it under AnsiballZ. The project's module_utils are found as
ansible.module_utils.<name>, as AnsiballZ packs them. About 0.6 s less than
`ansible localhost -m NAME` per call (no CLI start, inventory or zip).

    python tests/module_direct.py NAME < args.json

Under another Python (the instance's, which has no ansible) the controller's
ansible package is put on the path alone, as AnsiballZ ships it: none of the
controller's other packages (its boto3) is seen."""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTROLLER_ANSIBLE = os.environ.get("REEFGUIDE_CONTROLLER_ANSIBLE")
if CONTROLLER_ANSIBLE:  # the package alone, not the site-packages around it
    spec = importlib.util.spec_from_file_location("ansible", os.path.join(CONTROLLER_ANSIBLE, "__init__.py"),
                                                  submodule_search_locations=[CONTROLLER_ANSIBLE])
    sys.modules["ansible"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["ansible"])

import ansible.module_utils  # noqa: E402

ansible.module_utils.__path__.append(str(ROOT / "module_utils"))

from ansible.module_utils import basic  # noqa: E402

basic._ANSIBLE_ARGS = sys.stdin.buffer.read()
basic._ANSIBLE_PROFILE = "legacy"  # the JSON profile the module decodes its arguments with
runpy.run_path(str(ROOT / "library" / (sys.argv[1] + ".py")), run_name="__main__")
