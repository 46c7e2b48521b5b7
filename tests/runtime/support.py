"""Shared by the tests that start whole deployments."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ops.cli import main
from ops.procs import pid_alive


def teardown_deployment(home: Path) -> None:
    """`conclave down`, then SIGKILL whatever a failed test left running."""
    if (home / "conclave.json").exists():
        main(["down", "--data-dir", str(home)])
    for pidfile in [*home.glob("party-*/party.pid"), *home.glob("worker/*.pid"), home / "nats" / "nats.pid"]:
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
