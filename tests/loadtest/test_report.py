"""report.md, the target verdicts and the plots, rendered from a canned result."""

from __future__ import annotations

import matplotlib.image

from loadtest.plots import write_plots
from loadtest.report import render_markdown, scenario_figures, summary_text, targets
from loadtest.stats import Fate, cpu_per_signature, per_second, summarise

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def canned_run(name: str, fates: list[Fate], events: list[dict] | None = None) -> dict:
    samples = [{"t": t / 2, "pool": max(0, 60 - 10 * t), "in_flight": 0, "finished": 0} for t in range(5)]
    return {
        "name": name, "load": "open loop, all at once", **summarise(fates), "issuing_s": 0.0, "ended_s": 2.0,
        "pool": {"fill": {"start": 0, "level": 60, "seconds": 12.0}, "before_load": 57, "after_load": 20,
                 "min": 20, "max": 60},
        "events": events or [], "foreign_results": 0, "malformed_results": 0,
        "timeline": per_second(fates, samples, 2.0), "samples": samples,
        "request_log": [{"id": f.request_id, "issued_s": f.issued, "finished_s": f.finished, "outcome": f.outcome,
                         "attempts": f.attempts, "deadlettered": f.deadlettered} for f in fates],
        "cpu": cpu_per_signature({"party 1": (11, 1.0), "worker": (12, 2.0)},
                                 {"party 1": (11, 1.5), "worker": (12, 2.25)}, 50),
    }


def canned(scenario: str = "burst", rate: float = 0.0, runs: list[dict] | None = None) -> dict:
    # 50 signed in 1.0-2.47 ms each, the last 0.1005 s after the first publish: 497.7/s; one refused, one lost
    fates = [Fate(f"r{k}", k * 0.002, k * 0.002 + 0.001 + k * 0.00003, "signed", 1) for k in range(50)]
    fates += [Fate("x", 0.01, 0.05, "rejected:limits.max_per_tx", 1), Fate("y", 0.02, None, "lost")]
    result = {
        "tool": "conclave loadtest", "scenario": scenario, "command": "conclave loadtest --requests 52",
        "started_utc": "2026-11-21T10:00:00Z", "wall_s": 12.5,
        "settings": {"requests": 52, "warmup": 3, "load": {"rate": rate, "concurrency": None, "duration": 600.0,
                                                             "timeout": 120.0, "mode": "open loop, all at once"}},
        "deployment": {"data_dir": "/tmp/conclave-loadtest-x", "owned": True, "kept": False,
                       "nats_url": "nats://127.0.0.1:40000", "embedded_broker": True, "level": "dev-2048",
                       "parties": 3, "threshold": 2, "shards": 2, "pool_low": 2, "pool_high": 56,
                       "refill_parallel": 2, "concurrency_per_shard": 16, "max_attempts": 4, "key_id": "key-1"},
        "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "platform": "Linux", "python": "3.11.7",
                    "gmp": "GMP 6.3.0", "coincurve": "21.0.0"},
        "baselines": {"nats_rtt": {"requests": 1000, "payload_bytes": 256, "p50_ms": 0.25, "p99_ms": 0.5},
                      "coincurve_sign": {"median_us": 25.0},
                      "presign": {"presign_per_party_s": 0.35, "model_presign_per_party_s": 1.0,
                                  "ratio_presign_to_model": 0.35, "modulus_bits": 2048, "runs": 3,
                                  "primitives": {"G": 3e-5, "N": 3.4e-3, "N2": 9.3e-3}, "primes": "pregenerated"}},
        "runs": runs or [canned_run("burst", fates)], "ok": False, "exit_code": 3,
        "loadavg_1m": {"start": 0.5, "end": 1.9},
        "files": {"result": "result.json", "report": "report.md", "latency_cdf": "latency_cdf.png",
                  "timeline": "timeline.png"},
    }
    result["scenario_figures"] = scenario_figures(result)
    result["targets"] = targets(result)
    return result


def verdicts(result: dict) -> dict[str, bool | None]:
    return {t["figure"]: t["met"] for t in result["targets"]}


def test_each_target_is_judged_against_its_baseline():
    v = verdicts(canned())
    assert v == {
        "latency p50 ÷ NATS round-trip p50": True,  # 1.72 ms ÷ 0.25 ms = 6.88
        "latency p99": True,
        "burst throughput": True,
        "wall time per signature under load ÷ single-key coincurve sign": None,
        "presign per party ÷ cost model n·(12G+56N+33N²)": True,
    }
    rows = {t["figure"]: t for t in canned()["targets"]}
    assert rows["latency p50 ÷ NATS round-trip p50"]["ratio"] == 6.88
    assert rows["presign per party ÷ cost model n·(12G+56N+33N²)"]["ratio"] == 0.35


def test_a_sustained_load_below_the_peer_reference_is_not_judged_against_it():
    peer = "sustained throughput vs peer (GG18 over NATS JetStream, 134–167/min)"
    slow = {t["figure"]: t for t in canned("sustained", rate=2.0)["targets"]}[peer]
    assert slow["met"] is None and "--rate 2.8" in slow["note"]
    assert verdicts(canned("sustained", rate=5.0))[peer] is True  # 500/s is far above 167/min


def test_the_report_shows_setup_summary_baselines_targets_and_errors():
    md = render_markdown(canned())
    for section in ("## Setup", "## Summary", "## Baselines", "## Against targets", "## Errors", "## Files"):
        assert section in md
    assert "Command: `conclave loadtest --requests 52`" in md
    assert "| signed | 50 |" in md and "| lost (no result in time) | 1 |" in md
    assert "| burst | rejected:limits.max_per_tx | 1 |" in md and "| burst | lost | 1 |" in md
    assert "| burst throughput | 497.7 signatures/s | 1.66 | ≥ 300/s | met |" in md
    assert "**not every request was signed**" in md
    assert "- `timeline.png`" in md


def test_shards_report_the_ratio_and_faults_the_events():
    one = canned()["runs"][0]
    split = dict(one, name="2 workers, 1 shard each", throughput_per_s=2 * one["throughput_per_s"])
    shards = canned("shards", runs=[dict(one, name="1 worker, 2 shards"), split])
    assert shards["scenario_figures"]["ratio"] == 2.0
    assert "× 2.00" in render_markdown(shards)
    assert "burst throughput (1 worker, 2 shards)" in verdicts(shards)
    events = [{"t": 0.01, "kind": "kill", "label": "SIGKILL party 2 (pid 1)"},
              {"t": 0.05, "kind": "ready", "label": "party 2 ready"}]
    fault_run = dict(one, events=events, phases={"before": one, "during": one, "after": one})
    md = render_markdown(canned("faults", runs=[fault_run]))
    assert "| 0.01 | SIGKILL party 2 (pid 1) |" in md and "| before | 52 | 50 |" in md


def test_the_printed_summary_names_every_file():
    text = summary_text(canned(), "/tmp/out")
    assert "NOT every request signed" in text and "50/52 signed" in text
    assert "/tmp/out/result.json" in text and "/tmp/out/timeline.png" in text


def test_plots_are_valid_pngs(tmp_path):
    result = canned()
    events = [{"t": 0.03, "kind": "kill", "label": "SIGKILL party 2"}]
    result["runs"].append(dict(result["runs"][0], name="second", events=events))
    files = write_plots(result, tmp_path)
    assert files == {"latency_cdf": "latency_cdf.png", "timeline": "timeline.png"}
    for name in files.values():
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        height, width, _ = matplotlib.image.imread(tmp_path / name).shape
        assert width > 600 and height > 400


def test_the_report_shows_cpu_per_signature_by_process():
    md = render_markdown(canned())
    section = md.split("## CPU by process", 1)[1].split("##", 1)[0]
    assert "| party 1 | 10.00 |" in section and "| worker | 5.00 |" in section
    assert "**15.00**" in section and "2 × 1000 ÷ the total" in section


def test_only_a_phase_meant_for_a_target_is_judged_on_it():
    fates = [Fate(f"r{k}", k * 0.002, k * 0.002 + 0.001, "signed", 1) for k in range(10)]
    runs = [dict(canned_run("one at a time", fates), judged_on="latency"),
            dict(canned_run("burst", fates), judged_on="throughput")]
    v = verdicts(canned(runs=runs))
    assert v["latency p99 (one at a time)"] is True and v["latency p99 (burst)"] is None
    assert v["burst throughput (burst)"] is not None and "burst throughput (one at a time)" not in v
    fault = verdicts(canned("faults", runs=[dict(canned_run("faults", fates), judged_on="fault")]))
    assert fault["latency p99"] is None
