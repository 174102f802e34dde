# A module that must not outlive its controller. ansible-playbook killed outright (SIGKILL, the
# laptop's lid, a lost terminal) leaves its workers and the modules they run going, in process
# groups of their own: an upload would carry on to its end. Such a module watches the
# ansible-playbook process and, once it has ended, signals itself SIGTERM, which it already handles
# (interrupt.py): it stops sending, aborts its multipart uploads and exits.

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

CHECK_EVERY = 0.5  # seconds


def process_alive(pid: Optional[int]) -> bool:
    """Whether pid still runs. A zombie (ended, not yet reaped by its parent) does not."""
    if not pid:
        return True
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass  # no /proc (a macOS controller): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_with(pid: Optional[int], signum: int = signal.SIGTERM) -> None:
    """Signal this process once pid has ended (a daemon thread: it dies with the process)."""
    if not pid:
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(CHECK_EVERY):
            if not process_alive(pid):
                os.kill(os.getpid(), signum)
                return

    threading.Thread(target=watch, name="controller-watch", daemon=True).start()
