# reefguide-efs: a session that ended is not a command that answered.
#
# Session Manager can end a session in the middle of a command (the maximum session duration,
# an administrator's TerminateSession, an agent restart, a network drop). amazon.aws 10.1.2's
# aws_ssm then either leaves its read loop without the command's end marker and returns rc None
# and whatever output had arrived, without raising (ansible-core turns rc None into rc 0), or
# its read of the closed terminal fails (EIO) and ssm_retry sends the same command again in a new
# session (seen in the lab): so every call must be safe to run twice (detached.py makes the
# start so), and every call of the remote part is checked: rc None is a cut (guard_connection),
# and each shell command ends with an end marker of its own, without which its output is torn
# (with_end_marker, before_end_marker). Either way the output says nothing about the instance:
# the caller reconnects and asks again (ask_again), and never concludes, forgets or resends from it.

from __future__ import annotations

import secrets
import time
from typing import Any, Callable, Optional, TypeVar

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.utils.display import Display

display = Display()
T = TypeVar("T")

# asking again after a cut: a new session each time (seconds on AWS); a session that keeps
# ending under every call is a broken link, said so after this many
ASK_AGAIN = 5
PAUSE = 1.0  # seconds before the first new session, doubled each time


class SessionCut(AnsibleConnectionFailure):
    """The SSM session ended before the call's end came back: what it did on the instance is unknown."""


def end_marker() -> str:
    """A marker of this call's own: output of another call (or of this one asked again) never ends with it."""
    return "--reefguide-efs-end-%s--" % secrets.token_hex(8)


def with_end_marker(cmd: str, marker: str) -> str:
    """cmd, then the marker on a line of its own once cmd has ended (whatever its status). One line:
    over aws_ssm a newline in a command makes the session's interactive bash print its continuation
    prompt ("> ") into the output."""
    return "%s; printf '\\n%%s\\n' %s" % (cmd.rstrip().rstrip(";"), marker)


def before_end_marker(stdout: Optional[str], marker: str) -> Optional[str]:
    """The output before the marker; None when the marker is not its last line (torn output)."""
    text = (stdout or "").rstrip()
    if not text.endswith(marker):
        return None
    return text[:-len(marker)]


def guard_connection(connection: Any) -> None:
    """Make the connection raise SessionCut when a command comes back without its end (rc None),
    once per connection. The session is closed first, so the next call opens a new one."""
    exec_command = connection.exec_command
    if getattr(exec_command, "reefguide_guards", False):
        return

    def guarded(cmd: str, *args: Any, **kwargs: Any) -> Any:
        rc, stdout, stderr = exec_command(cmd, *args, **kwargs)
        if rc is None:
            try:
                connection.close()
            except Exception as exc:  # the session is gone either way
                display.vvv("closing the ended SSM session: %s" % exc)
            raise SessionCut("the SSM session ended in the middle of a command (no exit status came back; "
                             "%d bytes of output had)" % len(stdout or ""))
        return rc, stdout, stderr

    guarded.reefguide_guards = True  # type: ignore[attr-defined]
    connection.exec_command = guarded


def tell(message: str) -> None:
    """Shown now (a worker's warnings are printed only when its task ends, and only some), and kept
    as a warning."""
    display.display("  %s" % message)
    display.warning(message)


def ask_again(what: str, call: Callable[[], Optional[T]], attempts: int = ASK_AGAIN,
              then: str = "nothing was concluded from it") -> T:
    """call() until it answers: a SessionCut, or None (torn output), is asked again in a new session.
    what: the call, for the messages; then: what the failure leaves, for the last one."""
    pause = PAUSE
    for attempt in range(1, attempts + 1):
        try:
            answer = call()
        except SessionCut as exc:
            answer, why = None, str(exc)
        else:
            why = "its output came back without its end marker"
        if answer is not None:
            return answer
        if attempt == attempts:
            break
        tell("%s: %s; asking again in a new session (%d of %d)" % (what, why, attempt + 1, attempts))
        time.sleep(pause)
        pause *= 2
    raise AnsibleActionFail("%s: the SSM session ended in the middle of it %d times running (%s); %s"
                            % (what, attempts, why, then))
