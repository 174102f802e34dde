# A module's parameters completed from its argument spec, for callers that run an engine
# without AnsibleModule (tests, a module doing several steps in one session).

from __future__ import annotations

from typing import Any


def with_defaults(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """params completed with the spec's defaults; ValueError names unknown ones."""
    unknown = set(params) - set(spec)
    if unknown:
        raise ValueError("unknown parameters: %s" % ", ".join(sorted(unknown)))
    out = {name: opts.get("default") for name, opts in spec.items()}
    out.update(params)
    return out
