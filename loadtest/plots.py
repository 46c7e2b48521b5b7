"""``latency_cdf.png`` and ``timeline.png``, drawn from the result dict (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from loadtest.report import P50_OVER_NATS, P99_MS  # noqa: E402

__all__ = ["write_plots"]

DPI = 110


def write_plots(result: dict[str, Any], out: Path) -> dict[str, str]:
    """Both figures into ``out``; returns their file names."""
    return {"latency_cdf": _latency_cdf(result, out / "latency_cdf.png"),
            "timeline": _timeline(result, out / "timeline.png")}


def _latencies_ms(run: dict[str, Any]) -> list[float]:
    return sorted((r["finished_s"] - r["issued_s"]) * 1000 for r in run["request_log"] if r["outcome"] == "signed")


def _latency_cdf(result: dict[str, Any], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    everything = []
    for run in result["runs"]:
        ms = _latencies_ms(run)
        everything += ms
        if ms:
            lat = run["latency_ms"]
            ax.step(ms, [(k + 1) / len(ms) for k in range(len(ms))], where="post",
                    label=f"{run['name']}: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms (n={len(ms)})")
    p50_target = P50_OVER_NATS * result["baselines"]["nats_rtt"]["p50_ms"]
    ax.axvline(P99_MS, color="tab:red", linestyle="--", linewidth=1, label=f"p99 target {P99_MS:g} ms")
    ax.axvline(p50_target, color="tab:green", linestyle=":", linewidth=1,
               label=f"p50 target {P50_OVER_NATS:g}× NATS round trip = {p50_target:.2f} ms")
    for q in (0.5, 0.9, 0.99):
        ax.axhline(q, color="grey", linewidth=0.5)
    if everything and max(everything) / max(min(everything), 1e-3) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency, publish → result (ms)")
    ax.set_ylabel("fraction of signed requests")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"conclave loadtest {result['scenario']}: latency CDF ({result['deployment']['level']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _bin_width(span: float) -> float:
    """A bin that gives about 30 bins over the run: a burst over in a second still shows its shape."""
    return next((w for w in (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0) if span / w <= 30), 30.0)


def _rate(times: list[float], width: float, span: float) -> tuple[list[float], list[float]]:
    """Completions per second in bins of ``width`` s, as step-plot coordinates."""
    bins = [0] * (int(span / width) + 1)
    for t in times:
        bins[int(t / width)] += 1
    return [k * width for k in range(len(bins))], [n / width for n in bins]


def _in_flight(log: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """Requests issued and not yet answered, exactly, at every issue and answer."""
    changes = sorted([(r["issued_s"], 1) for r in log if r["issued_s"] is not None]
                     + [(r["finished_s"], -1) for r in log if r["finished_s"] is not None])
    times, counts, n = [0.0], [0], 0
    for t, step in changes:
        n += step
        times.append(t)
        counts.append(n)
    return times, counts


def _timeline(result: dict[str, Any], path: Path) -> str:
    fig, (rate_ax, pool_ax) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    flight_ax = rate_ax.twinx()
    span = max(max(r["ended_s"], *(s["t"] for s in r["samples"])) for r in result["runs"])
    width = _bin_width(span)
    for k, run in enumerate(result["runs"]):
        color, log = f"C{k}", run["request_log"]
        for outcome, style in (("signed", "-"), ("error", ":")):
            done = [r["finished_s"] for r in log if r["finished_s"] is not None
                    and (r["outcome"] == "signed") == (outcome == "signed")]
            if done:
                rate_ax.step(*_rate(done, width, span), where="post", color=color, linestyle=style,
                             label=f"{run['name']}: {outcome}/s ({width:g} s bins)")
        flight_ax.step(*_in_flight(log), where="post", color=color, linestyle="--", alpha=0.6,
                       label=f"{run['name']}: in flight")
        pooled = [s for s in run["samples"] if s["pool"] is not None]
        pool_ax.plot([s["t"] for s in pooled], [s["pool"] for s in pooled], color=color, marker=".", markersize=4,
                     label=run["name"])
        for event in run["events"]:
            for ax in (rate_ax, pool_ax):
                ax.axvline(event["t"], color="tab:red", linewidth=1)
            rate_ax.annotate(event["label"], (event["t"], 0.02), xycoords=("data", "axes fraction"), rotation=90,
                             va="bottom", ha="right", fontsize=7, color="tab:red")
    rate_ax.set_ylabel("completions per second")
    flight_ax.set_ylabel("requests in flight")
    pool_ax.set_ylabel("ready presignatures (wallet)")
    pool_ax.set_xlabel("seconds since the load started")
    rate_ax.set_title(f"conclave loadtest {result['scenario']}: throughput, in-flight requests and pool level")
    handles, labels = rate_ax.get_legend_handles_labels()
    more = flight_ax.get_legend_handles_labels()
    rate_ax.legend(handles + more[0], labels + more[1], loc="upper left", fontsize=8)
    pool_ax.legend(loc="upper right", fontsize=8)
    for ax in (rate_ax, pool_ax, flight_ax):
        ax.set_ylim(bottom=0)
    for ax in (rate_ax, pool_ax):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name
