"""The one error a load test reports to its user: what went wrong, what to do, and the exit code."""

from __future__ import annotations

__all__ = ["LoadtestError", "EXIT_USAGE", "EXIT_UNSIGNED", "EXIT_UNAVAILABLE"]

EXIT_USAGE = 2  # as every `conclave` command: the message says what to change
EXIT_UNSIGNED = 3  # the load ran, but some request was not signed (rejected, failed, lost, not published)
EXIT_UNAVAILABLE = 4  # the deployment or broker could not be brought up, reached or made ready


class LoadtestError(Exception):
    """An expected failure (deployment down, broker unreachable, pool not filling): no traceback, just this."""

    def __init__(self, message: str, code: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code
