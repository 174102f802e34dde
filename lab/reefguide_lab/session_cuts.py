"""Sessions ended in the middle of a command, on demand.

On AWS a session can end at any moment: the account's maximum session duration, an
administrator's TerminateSession, an agent restart, a network drop. The session-manager-plugin
then exits; amazon.aws's aws_ssm plugin ends its read loop without the command's end marker
and returns no exit code and whatever output had arrived, without raising.

A test arms a cut: "end the session at the Nth command matching this pattern" (a job start,
a poll, the mount). labd keeps the rules and counts the commands across all sessions; each
plugin stand-in asks labd about every command it relays (only while a rule is armed). For a
command to cut, the stand-in lets it run on the instance and relays its output up to the
aws_ssm plugin's end marker, then ends the session as Session Manager does: the shell and its
non-detached children are killed and the plugin exits. So the command did its work and the
client never heard that it ended: the worst case for a start (the job runs) and for the mount.

Standard library only: the stand-in half runs under the system python.

Control (labd):  POST /lab/session-cuts  {"cuts": [{"match": "async_wrapper", "nth": 1}, ...]}
                 (replaces the armed rules; [] disarms) -> the status
                 GET  /lab/session-cuts  -> {"cuts": [{"match", "nth", "seen", "fired"}], "fired": N}
Stand-in:        POST /lab/session/<id>/command?token=...  {"command": "..."} -> {"cut": bool}
"""

from __future__ import annotations

import re
import threading
from typing import Any

# aws_ssm's wrapping of a command (plugin_utils/ssm/terminalmanager.py, wrap_command):
#   printf '%s\n' 'MARK_START';\necho | CMD;\nprintf '\n%s\n%s\n' "$?" 'MARK_END';\n
WRAPPED = re.compile(rb"printf '%s\\n' '([A-Za-z]+)';\necho \| (.*?);\n"
                     rb"printf '\\n%s\\n%s\\n' \"\$\?\" '([A-Za-z]+)';\n", re.S)


def wrapped_commands(buffer: bytearray) -> list[tuple[str, bytes]]:
    """(command, its end marker) for each whole wrapped command in `buffer`, consumed from it
    (the aws_ssm plugin writes a command in 1024-byte chunks)."""
    found, end = [], 0
    for m in WRAPPED.finditer(buffer):
        found.append((m.group(2).decode(errors="replace"), m.group(3)))
        end = m.end()
    del buffer[:end]
    return found


class OutputCut:
    """The stand-in's side of one cut: relays a command's output up to its end marker, never the
    marker itself (nor anything after it)."""

    def __init__(self, mark_end: bytes) -> None:
        self.mark_end, self.held = mark_end, b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(what may be relayed now, whether the marker arrived: end the session then)."""
        self.held += data
        at = self.held.find(self.mark_end)
        if at >= 0:
            return self.held[:at], True
        keep = len(self.mark_end) - 1  # a marker may straddle two reads
        out, self.held = self.held[:-keep], self.held[-keep:]
        return out, False


class SessionCuts:
    """labd's side: the armed rules and the commands seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[dict[str, Any]] = []
        self.fired = 0

    def armed(self) -> bool:
        with self.lock:
            return any(not r["fired"] for r in self.rules)

    def configure(self, doc: dict[str, Any]) -> dict[str, Any]:
        rules = []
        for rule in doc.get("cuts") or []:
            re.compile(rule["match"])  # a bad pattern is the caller's error, now
            rules.append({"match": rule["match"], "nth": max(1, int(rule.get("nth", 1))), "seen": 0,
                          "fired": False})
        with self.lock:
            self.rules = rules
        return self.status()

    def command_seen(self, command: str) -> bool:
        """Count the command against every armed rule; True when one of them fires on it."""
        with self.lock:
            cut = False
            for r in self.rules:
                if r["fired"] or not re.search(r["match"], command):
                    continue
                r["seen"] += 1
                if r["seen"] == r["nth"] and not cut:
                    r["fired"], cut = True, True
                    self.fired += 1
            return cut

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"cuts": [dict(r) for r in self.rules], "fired": self.fired}

