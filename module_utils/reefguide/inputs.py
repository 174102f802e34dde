# The checks every playbook runs on what the user gave (-e name=value), on the controller, before
# anything starts. One place, so stage, teardown and rollback refuse the same input the same way,
# each message naming the variable the user set.

from __future__ import annotations

from typing import Any, Optional

from ansible.module_utils.reefguide.layout import DestinationError, check_allowed, removal_problem
from ansible.module_utils.reefguide.paths import UnsafePathError, safe_relpath
from ansible.module_utils.reefguide.releases_store import RELEASE_ID_RE


class InputError(ValueError):
    """Input that cannot be used; the message says which variable and what to give instead."""


def whole_number(value: Any, name: str, minimum: int, maximum: Optional[int] = None) -> int:
    """value as an int within [minimum, maximum]; bools and fractions are refused, not rounded."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.lstrip("-").isdigit():
        raise InputError("%s must be a whole number, got %r" % (name, value))
    number = int(text)
    if number < minimum or (maximum is not None and number > maximum):
        upper = " and at most %d" % maximum if maximum is not None else ""
        raise InputError("%s must be at least %d%s, got %d" % (name, minimum, upper, number))
    return number


def release_id(value: Optional[str], name: str = "release_id") -> Optional[str]:
    if value in (None, ""):
        return None
    if not RELEASE_ID_RE.match(str(value)):
        raise InputError("%s %r is not a release id (1-100 characters from A-Z a-z 0-9 . _ + -, starting with a "
                         "letter or digit; the summary of a stage names its release)" % (name, value))
    return str(value)


def paths_to_remove(value: Any, allowed_roots: list[str]) -> list[str]:
    """teardown's remove: a list of paths under the allowed roots, never the workers' root, their cache, or a
    directory holding either."""
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise InputError("remove must be a list of paths, e.g. -e '{\"remove\": [\"data/reefguide/old\"]}', got %r"
                         % (value,))
    out = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise InputError("remove: %r is not a path" % (item,))
        if item.startswith("/"):
            raise InputError("remove: %r is absolute: give it relative to the EFS root" % item)
        try:
            path = safe_relpath(item, "remove: path")
            check_allowed(path, allowed_roots, what="remove: path")
        except (UnsafePathError, DestinationError) as exc:
            raise InputError(str(exc))
        problem = removal_problem(path)
        if problem:  # whatever reefguide_allowed_roots says
            raise InputError("remove: %s" % problem)
        out.append(path)
    return out
