"""The arithmetic of a load test: percentiles, pacing, per-second series and one run's summary.

Everything here is pure (no NATS, no clock), so the figures a report prints can
be checked against hand-computed values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SIGNED", "LOST", "PUBLISH_ERROR", "Fate", "percentile", "latency_summary", "issue_offsets", "error_kind",
           "summarise", "per_second", "phase_summaries", "cpu_per_signature"]

SIGNED = "signed"
LOST = "lost"
PUBLISH_ERROR = "publish_error"


@dataclass(frozen=True)
class Fate:
    """What became of one request; times are seconds since the load phase started."""

    request_id: str
    issued: float | None  # just before its publish; None if the load phase ended before its turn
    finished: float | None  # when its result (or the publish error) arrived; None if lost
    outcome: str | None  # signed, rejected:<rule>, failed, publish_error, lost; None if never issued
    attempts: int | None = None  # the result's sign attempts
    deadlettered: bool = False

    @property
    def latency(self) -> float | None:
        if self.issued is None or self.finished is None:
            return None
        return self.finished - self.issued


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank: always one of the measured values."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Count, p50/p90/p99 (nearest rank), min, max and mean in milliseconds; None figures if empty."""
    if not seconds:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "min": None, "max": None, "mean": None}
    ms = [s * 1000 for s in seconds]
    return {"count": len(ms), "p50": _r(percentile(ms, 50)), "p90": _r(percentile(ms, 90)),
            "p99": _r(percentile(ms, 99)), "min": _r(min(ms)), "max": _r(max(ms)), "mean": _r(sum(ms) / len(ms))}


def issue_offsets(count: int, rate: float) -> list[float]:
    """When each request of an open loop is due, in seconds after the start: k/rate, or all at 0 for rate 0.

    Fixed offsets from one start (not sleeps between sends) keep the offered rate exact
    even when a publish is slow: a late request is sent at once, and the next stays on time.
    """
    if rate < 0:
        raise ValueError("rate must be 0 (all at once) or positive")
    return [0.0 if rate == 0 else k / rate for k in range(count)]


def error_kind(status: str, rule: str | None) -> str:
    """The error key a result counts under: ``rejected:<rule>`` keeps policy refusals apart by rule."""
    if status == "rejected":
        return f"rejected:{rule or 'unknown'}"
    return status


def per_second(fates: Sequence[Fate], samples: Sequence[dict[str, Any]], until: float) -> list[dict[str, Any]]:
    """One row per second of the run: issued, signed, errors, in flight at the second's end, last pool level."""
    rows = []
    for k in range(max(1, math.ceil(until))):
        lo, hi = float(k), float(k + 1)
        pool = [s["pool"] for s in samples if s["t"] < hi and s.get("pool") is not None]
        rows.append({
            "t": k,
            "issued": sum(1 for f in fates if f.issued is not None and lo <= f.issued < hi),
            "signed": sum(1 for f in fates if f.outcome == SIGNED and lo <= f.finished < hi),
            "errors": sum(1 for f in fates if f.outcome not in (SIGNED, LOST, None)
                          and f.finished is not None and lo <= f.finished < hi),
            "in_flight": sum(1 for f in fates if f.issued is not None and f.issued < hi
                             and (f.finished is None or f.finished >= hi)),
            "pool": pool[-1] if pool else None,
        })
    return rows


def summarise(fates: Sequence[Fate]) -> dict[str, Any]:
    """Every figure of one load phase that depends only on what became of its requests."""
    issued = [f for f in fates if f.issued is not None]
    signed = [f for f in issued if f.outcome == SIGNED]
    errors = Counter(f.outcome for f in issued if f.outcome != SIGNED)
    retries = [f.attempts - 1 for f in issued if f.attempts]
    window = _window(issued, signed)
    rate = len(signed) / window if window else 0.0
    return {
        "requests": len(fates),
        "issued": len(issued),
        "not_issued": len(fates) - len(issued),
        "signed": len(signed),
        "errors": dict(sorted(errors.items())),
        "error_count": sum(errors.values()),
        "lost": errors.get(LOST, 0),
        "deadlettered": sum(1 for f in issued if f.deadlettered),
        "latency_ms": latency_summary([f.latency for f in signed]),
        "throughput_per_s": _r(rate),
        "throughput_per_min": _r(rate * 60),
        "per_signature_ms": _r(1000 / rate) if rate else None,
        "window_s": _r(window),
        "retries": {"total": sum(retries), "per_request": _distribution(retries)},
    }


def phase_summaries(fates: Sequence[Fate], bounds: Sequence[tuple[str, float, float]]) -> dict[str, dict[str, Any]]:
    """``summarise`` for the requests issued within each named [start, end) interval (before/during/after a fault)."""
    return {name: summarise([f for f in fates if f.issued is not None and lo <= f.issued < hi])
            for name, lo, hi in bounds}


def _window(issued: Sequence[Fate], signed: Sequence[Fate]) -> float:
    """From the first publish to the last signature: the span over which throughput is averaged."""
    if not signed:
        return 0.0
    return max(f.finished for f in signed) - min(f.issued for f in issued)


def _distribution(values: Iterable[int]) -> dict[str, int]:
    counts = Counter(values)
    return {str(k): counts[k] for k in sorted(counts)}


def _r(x: float) -> float:
    return round(x, 3)


def cpu_per_signature(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]],
                      signed: int) -> dict[str, Any]:
    """CPU each process spent during a phase, in total and per signature: where a throughput limit lies.

    ``before`` and ``after`` map a role to (pid, CPU seconds); a role whose process was replaced meanwhile (a
    restarted party) is left out, since its two readings belong to different processes.
    """
    spent = {name: after[name][1] - before[name][1] for name in after
             if name in before and after[name][0] == before[name][0]}
    total = sum(spent.values())
    per = {name: round(s * 1000 / signed, 2) for name, s in spent.items()} if signed else {}
    return {"seconds": {name: round(s, 3) for name, s in spent.items()}, "ms_per_signature": per,
            "total_ms_per_signature": round(total * 1000 / signed, 2) if signed else None}
