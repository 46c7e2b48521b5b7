"""The figures a load report prints, against values worked out by hand."""

from __future__ import annotations

import pytest

from loadtest.stats import (Fate, cpu_per_signature, error_kind, issue_offsets, latency_summary, per_second,
                            percentile, phase_summaries, summarise)


def test_percentiles_are_nearest_rank_and_always_a_measured_value():
    values = list(range(10, 0, -1))  # unsorted on purpose: 10, 9, ..., 1
    assert [percentile(values, q) for q in (0, 10, 50, 90, 91, 99, 100)] == [1, 1, 5, 9, 10, 10, 10]
    assert percentile([7.5], 99) == 7.5


def test_latency_summary_is_in_milliseconds_and_empty_when_nothing_signed():
    s = latency_summary([0.003, 0.001, 0.002, 0.010])
    assert s == {"count": 4, "p50": 2.0, "p90": 10.0, "p99": 10.0, "min": 1.0, "max": 10.0, "mean": 4.0}
    assert latency_summary([]) == {"count": 0, "p50": None, "p90": None, "p99": None, "min": None, "max": None,
                                   "mean": None}


def test_open_loop_offsets_follow_the_rate_from_one_start():
    assert issue_offsets(5, 2.0) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert issue_offsets(3, 0) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        issue_offsets(3, -1)


def test_rejections_count_under_their_rule():
    assert error_kind("rejected", "limits.max_per_tx") == "rejected:limits.max_per_tx"
    assert error_kind("rejected", None) == "rejected:unknown"
    assert error_kind("failed", None) == "failed"
    assert error_kind("signed", None) == "signed"


FATES = [
    Fate("a", 0.0, 0.10, "signed", 1),
    Fate("b", 0.0, 0.30, "signed", 2),
    Fate("c", 0.5, 1.50, "signed", 1, deadlettered=False),
    Fate("d", 0.5, 0.60, "rejected:limits.max_per_tx", 1),
    Fate("e", 1.0, 2.20, "failed", 4, deadlettered=True),
    Fate("f", 1.2, None, "lost"),
    Fate("g", 1.3, 1.31, "publish_error"),
    Fate("h", None, None, None),  # the load phase ended before its turn
]


def test_a_summary_counts_every_request_and_never_drops_one():
    s = summarise(FATES)
    assert (s["requests"], s["issued"], s["not_issued"], s["signed"]) == (8, 7, 1, 3)
    assert s["errors"] == {"failed": 1, "lost": 1, "publish_error": 1, "rejected:limits.max_per_tx": 1}
    assert (s["error_count"], s["lost"], s["deadlettered"]) == (4, 1, 1)
    assert s["latency_ms"]["count"] == 3 and s["latency_ms"]["p50"] == 300.0 and s["latency_ms"]["max"] == 1000.0
    # 3 signatures from the first publish (0.0) to the last signature (1.5)
    assert s["window_s"] == 1.5 and s["throughput_per_s"] == 2.0 and s["throughput_per_min"] == 120.0
    assert s["per_signature_ms"] == 500.0
    assert s["retries"] == {"total": 4, "per_request": {"0": 3, "1": 1, "3": 1}}


def test_nothing_signed_means_no_throughput_rather_than_a_division_by_zero():
    s = summarise([Fate("x", 0.0, None, "lost")])
    assert s["throughput_per_s"] == 0.0 and s["per_signature_ms"] is None and s["latency_ms"]["count"] == 0


def test_per_second_rows_add_up_to_the_summary():
    samples = [{"t": 0.0, "pool": 10}, {"t": 0.5, "pool": 8}, {"t": 1.4, "pool": None}, {"t": 1.9, "pool": 5}]
    rows = per_second(FATES, samples, 2.2)
    assert [r["t"] for r in rows] == [0, 1, 2]
    assert [r["issued"] for r in rows] == [4, 3, 0]
    assert [r["signed"] for r in rows] == [2, 1, 0]
    assert [r["errors"] for r in rows] == [1, 1, 1]  # rejected at 0.6, publish error at 1.31, failed at 2.2
    assert [r["in_flight"] for r in rows] == [1, 2, 1]  # the lost one stays in flight to the end
    assert [r["pool"] for r in rows] == [8, 5, 5]


def test_phases_split_requests_by_issue_time():
    phases = phase_summaries(FATES, [("before", float("-inf"), 0.5), ("during", 0.5, 1.2),
                                     ("after", 1.2, float("inf"))])
    assert {k: v["issued"] for k, v in phases.items()} == {"before": 2, "during": 3, "after": 2}
    assert phases["after"]["errors"] == {"lost": 1, "publish_error": 1}


def test_cpu_per_signature_leaves_out_a_process_that_was_replaced():
    before = {"party 1": (10, 3.0), "party 2": (20, 4.0), "worker": (30, 1.0)}
    after = {"party 1": (10, 5.0), "party 2": (21, 0.5), "worker": (30, 2.0)}  # party 2 was restarted
    cpu = cpu_per_signature(before, after, 100)
    assert cpu == {"seconds": {"party 1": 2.0, "worker": 1.0}, "ms_per_signature": {"party 1": 20.0, "worker": 10.0},
                   "total_ms_per_signature": 30.0}
    assert cpu_per_signature(before, after, 0)["total_ms_per_signature"] is None
