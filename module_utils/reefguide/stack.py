# Facts of the ReefGuide CloudFormation stack (docs/architecture.md), free of
# Ansible imports so the lab can load this file too.

from __future__ import annotations

import re

OUTPUT_SUFFIX = "efnConnectionInfo"


def slug(stack_name: str) -> str:
    """The stack name lower-cased with every character outside [a-z0-9]
    removed, prefixed with 'n' if it then starts with a digit, 'empty' if
    nothing is left."""
    s = re.sub(r"[^a-z0-9]", "", (stack_name or "").lower())
    if not s:
        return "empty"
    if s[0].isdigit():
        s = "n" + s
    return s


def output_key(stack_name: str) -> str:
    """The key of the stack output that carries the connection info."""
    return slug(stack_name) + OUTPUT_SUFFIX
