"""Smoke test for ``conclave bench`` on fixture primes (no prime search)."""

from __future__ import annotations

import json

import pytest

from ops.bench import PHASES
from ops.cli import EXIT_OK, build_parser
from tests.conftest import load_safe_primes


@pytest.mark.timeout(60)
def test_bench_dev_level_one_run(capsys, tmp_path):
    pool = iter(load_safe_primes(1024))
    out = tmp_path / "bench.md"
    args = build_parser().parse_args(["bench", "--levels", "dev-2048", "--runs", "1", "--json", "--out", str(out)])

    rc = args.func(args, primes=lambda bits: next(pool), progress=None)

    assert rc == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    level = result["levels"]["dev-2048"]
    assert set(level["phases"]) == set(PHASES)
    assert all(level["phases"][p] > 0 for p in PHASES)
    assert level["runs"] == 1
    assert level["modulus_bits"] == 2048
    assert set(level["primitives"]) == {"G", "N", "N2"}
    assert all(v > 0 for v in level["primitives"].values())
    assert level["presign_per_party_s"] == pytest.approx(level["phases"]["presign"] / 2)
    assert level["model_presign_per_party_s"] > 0
    assert level["ratio_presign_to_model"] > 0
    assert result["machine"]["nproc"] >= 1
    text = out.read_text()
    assert "conclave bench --levels dev-2048 --runs 1 --json" in text
    assert "| presign per party |" in text


def test_bench_rejects_unknown_level(capsys):
    from ops.cli import EXIT_USAGE, main

    assert main(["bench", "--levels", "dev-1", "--runs", "1"]) == EXIT_USAGE
    assert main(["bench", "--levels", "dev-2048", "--runs", "0"]) == EXIT_USAGE
