# A sync interrupted by a signal: Ctrl-C (SIGINT, which ansible-playbook's
# worker forwards to the module's process group), SIGTERM (a killed task or
# controller) and SIGHUP (a closed terminal or SSM pty). The signal becomes an
# exception in the main thread, so the run cancels its queue, cuts what is in
# flight and cleans up instead of dying with parts and temporaries left over.

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ansible.module_utils.reefguide.sync_common import SyncError

SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
# Exit status of the command line after a signal, as shells report it (128 + n).
EXIT_BASE = 128


class Interrupted(SyncError):
    """The run was stopped by a signal (or KeyboardInterrupt)."""

    def __init__(self, signame: str, detail: str = ""):
        self.signame = signame
        super().__init__("interrupted by %s%s" % (signame, ": " + detail if detail else ""))

    @property
    def exit_status(self) -> int:
        return EXIT_BASE + int(getattr(signal, self.signame, signal.SIGINT))


def as_interrupted(exc: BaseException) -> Interrupted:
    return exc if isinstance(exc, Interrupted) else Interrupted("SIGINT")


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While the block runs in the main thread, SIGINT, SIGTERM and SIGHUP
    raise Interrupted there, once: a second signal during the clean-up is
    ignored so that the clean-up finishes. A signal the process was started
    ignoring (nohup, a background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    previous = {}
    for name in SIGNALS:
        num = getattr(signal, name, None)
        if num is None or signal.getsignal(num) is signal.SIG_IGN:
            continue
        previous[num] = signal.signal(num, handler)
    try:
        yield
    finally:
        for num, old in previous.items():
            signal.signal(num, old)
