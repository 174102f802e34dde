"""How Session Manager ends a session, for the lab's session-manager-plugin stand-in.

Standard library only: the stand-in runs under the system python. AWS ends a session
that has had no input from the client for the account's idle timeout (output does not
count), or that reached the maximum session duration; the agent then kills the shell
and what it runs. A daemon that detached itself (double fork and setsid, as Ansible's
async_wrapper does) is no longer the shell's and survives, as it does on AWS.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Optional

# The plugin's words on AWS (aws/amazon-ssm-agent#261 for the idle one).
MESSAGES = {
    "idle": "Your session timed out due to inactivity and has been terminated.",
    "duration": "Your session has reached the maximum session duration and has been terminated.",
    "cut": "The session ended in the middle of a command (the lab's session cut).",
}

# amazon.aws.aws_ssm copies a module to the instance with `curl -o 'PATH' 'URL'; touch 'PATH'`
# (a put) and fetches a file with `curl --request PUT ... --upload-file 'PATH'` (a get).
TRANSFER = re.compile(rb"curl (?:-o '([^']+)'|--request PUT [^\n]*?--upload-file '([^']+)')")


class Clock:
    """When a session must end: its idle and duration limits (0: none)."""

    def __init__(self, idle_timeout: float, max_duration: float) -> None:
        self.idle_timeout, self.max_duration = float(idle_timeout or 0), float(max_duration or 0)
        self.started = self.last_input = time.monotonic()

    def input_seen(self) -> None:
        self.last_input = time.monotonic()

    def expired(self) -> Optional[str]:
        now = time.monotonic()
        if self.max_duration and now - self.started >= self.max_duration:
            return "duration"
        if self.idle_timeout and now - self.last_input >= self.idle_timeout:
            return "idle"
        return None

    def wait_at_most(self) -> float:
        """How long the relay may block before it must look at the clock again."""
        return 0.2 if (self.idle_timeout or self.max_duration) else 1.0


def transferred_names(buffer: bytearray) -> list:
    """Names of the files whose transfer commands `buffer` holds in whole lines; those lines
    are consumed (the plugin writes a command in 1024-byte chunks)."""
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(buffer[:end + 1])
    del buffer[:end + 1]
    names = []
    for m in TRANSFER.finditer(lines):
        path = (m.group(1) or m.group(2)).decode(errors="replace")
        names.append(re.sub(r"^AnsiballZ_|\.py$", "", os.path.basename(path)))
    return names


def _processes() -> dict[int, tuple]:
    """pid -> (ppid, session id, controlling terminal), as this (the host's) PID namespace numbers them."""
    out: dict[int, tuple] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry)] = (int(fields[1]), int(fields[3]), int(fields[4]))
    return out


def session_processes(leader: int) -> set[int]:
    """The session's processes and their descendants that die with it: those on a terminal (sudo's
    use_pty gives its command a session of its own on a pty, which hangs up), not a daemon that
    detached itself (setsid, no terminal), even while the parent it forked from still exits."""
    procs = _processes()
    members = {pid for pid, (_, sid, _) in procs.items() if sid == leader}
    grew = True
    while grew:
        children = {pid for pid, (ppid, sid, tty) in procs.items()
                    if ppid in members and pid not in members and (sid == leader or tty != 0)}
        members |= children
        grew = bool(children)
    return members


def kill_session(leader: int) -> None:
    """SIGKILL the session's processes, twice over for any forked in between."""
    for _ in range(3):
        pids = session_processes(leader)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
