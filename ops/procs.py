"""Processes by pid: is it alive, and stop it (the broker and the parties alike)."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

__all__ = ["pid_alive", "stop_pid"]

log = logging.getLogger(__name__)


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` names a running process; a zombie counts as dead (and ours is reaped)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A dead child of ours stays a zombie (and kill(pid, 0) succeeds) until it
    # is reaped, so reap it if it is ours...
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    # ...and treat someone else's zombie as dead too.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_pid(pid: int | None, timeout: float = 5.0) -> bool:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL. False if the process was already gone.

    Raises PermissionError if the process belongs to another user.
    """
    if not pid_alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    log.warning("pid %d ignored SIGTERM for %.1fs; killing it", pid, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True
