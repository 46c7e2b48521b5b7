"""``conclave loadtest`` against real deployments: every file written, every figure sane, nothing left running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.cli import main
from ops.deploy import Deployment
from ops.procs import pid_alive
from tests.loadtest.test_report import PNG_MAGIC
from tests.runtime.support import teardown_deployment

POOL = str(Path(__file__).resolve().parents[1] / "fixtures" / "safe_primes.json")
DEV = ["--security-level", "dev-2048", "--prime-pool", POOL]


def loadtest(capsys, home: Path, out: Path, *argv: str) -> tuple[int, dict]:
    try:
        code = main(["loadtest", *argv, *DEV, "--data-dir", str(home), "--out", str(out), "--json"])
        stdout = capsys.readouterr().out
    finally:
        teardown_deployment(home)  # a failed run's processes, if any: the command downs its own
    assert stdout.count("\n") == 1, "with --json stdout holds one JSON object and nothing else"
    return code, json.loads(stdout)


def check_files(out: Path, result: dict) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["latency_cdf.png", "report.md", "result.json", "timeline.png"]
    assert json.loads((out / "result.json").read_text()) == result
    for png in ("latency_cdf.png", "timeline.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC)
    report = (out / "report.md").read_text()
    assert f"# conclave loadtest: {result['scenario']}" in report and "## Against targets" in report


def check_stopped(home: Path) -> None:
    dep = Deployment(home)
    assert not any(pid_alive(dep.party_pid(i)) for i in dep.party_ids())
    assert not any(pid_alive(dep.worker_pid(n)) for n in dep.worker_names()) and not pid_alive(dep.nats_pid())


@pytest.mark.timeout(240)
def test_a_burst_signs_every_request_and_reports_it(tmp_path, capsys):
    home, out = tmp_path / "conclave", tmp_path / "out"
    code, result = loadtest(capsys, home, out, "--scenario", "burst", "--requests", "20", "--latency-samples", "5")
    assert code == 0 and result["ok"] and result["exit_code"] == 0
    check_files(out, result)
    check_stopped(home)
    one, run = result["runs"]
    assert (one["name"], one["judged_on"], one["signed"], run["judged_on"]) == ("one at a time", "latency", 5,
                                                                                "throughput")
    assert (run["requests"], run["issued"], run["signed"], run["errors"]) == (20, 20, 20, {})
    lat = run["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 120_000
    # each figure is rounded to 3 decimals on its own, so per minute may differ from 60 × per second by 0.03
    assert run["throughput_per_s"] > 0 and run["throughput_per_min"] == pytest.approx(run["throughput_per_s"] * 60,
                                                                                      abs=0.05)
    assert run["retries"] == {"total": 0, "per_request": {"0": 20}}
    # 5 + 3 warm-up one at a time, then 20 + 3 warm-up + 2 spare, so the level stays at the low watermark and no
    # refill runs during the burst
    assert one["pool"]["fill"]["level"] == 33 and run["pool"]["before_load"] == 22 and run["pool"]["min"] >= 2
    assert sum(row["signed"] for row in run["timeline"]) == 20 and run["samples"]
    assert all(r["outcome"] == "signed" and r["finished_s"] > r["issued_s"] for r in run["request_log"])
    base = result["baselines"]
    assert 0 < base["nats_rtt"]["p50_ms"] <= base["nats_rtt"]["p99_ms"] and base["coincurve_sign"]["median_us"] > 0
    assert base["presign"]["modulus_bits"] == 2048 and 0 < base["presign"]["ratio_presign_to_model"] < 5
    verdicts = {t["figure"]: t["met"] for t in result["targets"]}
    assert verdicts["latency p99 (one at a time)"] is not None and verdicts["latency p99 (burst)"] is None
    assert "burst throughput (burst)" in verdicts and "burst throughput (one at a time)" not in verdicts
    d = result["deployment"]
    assert d["pool_high"] == 33 and d["level"] == "dev-2048" and not d["kept"] and d["key_id"]


@pytest.mark.timeout(240)
def test_faults_kill_and_restart_party_2_while_the_load_runs(tmp_path, capsys):
    home, out = tmp_path / "conclave", tmp_path / "out"
    code, result = loadtest(capsys, home, out, "--scenario", "faults", "--requests", "12", "--concurrency", "3",
                            "--down-for", "1", "--no-baselines")
    run = result["runs"][0]
    assert code == (0 if not run["errors"] else 3)
    check_files(out, result)
    check_stopped(home)
    assert [e["kind"] for e in run["events"]] == ["kill", "restart", "ready"]
    # --down-for 1 between the marks; each time is rounded to the millisecond on its own
    assert run["events"][1]["t"] - run["events"][0]["t"] >= 1.0 - 0.002
    assert sum(p["issued"] for p in run["phases"].values()) == run["issued"] == 12
    assert all(r["outcome"] is not None for r in run["request_log"])
    assert result["baselines"]["presign"] == {"skipped": "--no-baselines"}


@pytest.mark.parametrize("argv, message", [
    (["--scenario", "burst", "--rate", "5"], "publishes every request at once"),
    (["--scenario", "sustained", "--rate", "2", "--concurrency", "2"], "not both"),
    (["--scenario", "faults", "--data-dir", "/nonexistent", "--key", "k"], "does only to a deployment it started"),
    (["--key", "k"], "give both"),
    (["--data-dir", "/nonexistent", "--key", "k", "--shards", "3"], "--shards shape(s) a deployment"),
    (["--data-dir", "/nonexistent", "--key", "k"], "no deployment in /nonexistent"),
    (["--scenario", "burst", "--pool", "off"], "applies to the sustained scenario"),
])
def test_bad_usage_says_what_to_change_and_starts_nothing(argv, message, capsys):
    assert main(["loadtest", *argv]) == 2
    assert message in capsys.readouterr().err
