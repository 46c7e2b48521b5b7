"""What every ``conclave`` command prints: one JSON object with ``--json``, text otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["emit", "fail", "say"]


def emit(args, obj: dict[str, Any], human: str) -> None:
    print(json.dumps(obj) if getattr(args, "json", False) else human)


def fail(args, code: int, message: str, **extra: Any) -> int:
    """Report an error (JSON on stdout with ``--json``, always a line on stderr); return ``code``."""
    if getattr(args, "json", False):
        print(json.dumps({"error": message, **extra}))
    print(f"conclave: {message}", file=sys.stderr)
    return code


def say(text: str) -> None:
    """Progress for humans, on stderr so that ``--json`` output stays one object."""
    print(text, file=sys.stderr, flush=True)
