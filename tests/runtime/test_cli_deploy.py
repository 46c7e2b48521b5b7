"""The operator's commands around a deployment: up (idempotent), status, presign, down,
replay on copied store files, usage errors, and the demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from ops.cli import main
from ops.deploy import Deployment, pid_alive
from tests.runtime.support import teardown_deployment

POOL = str(Path(__file__).resolve().parents[1] / "fixtures" / "safe_primes.json")

pytestmark = pytest.mark.timeout(300)


def run(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if out else {})


@pytest.fixture
def home(tmp_path):
    d = tmp_path / "conclave"
    yield d
    teardown_deployment(d)


def test_up_status_presign_replay_down(home, capsys, tmp_path):
    h = str(home)
    code, up = run(capsys, "up", "--data-dir", h, "--security-level", "dev-2048", "--prime-pool", POOL, "--pool-high", "0",
                    "--json")
    assert code == 0 and [p["started"] for p in up["parties"]] == [True, True, True]
    assert up["nats"]["embedded"] and up["nats"]["url"].startswith("nats://127.0.0.1:")

    # again: nothing new starts
    code, again = run(capsys, "up", "--data-dir", h, "--json")
    assert code == 0 and not any(p["started"] for p in again["parties"]) and not again["nats"]["started"]
    assert [p["pid"] for p in again["parties"]] == [p["pid"] for p in up["parties"]]

    # a killed party is the only thing restarted
    os.kill(up["parties"][2]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(up["parties"][2]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    code, status = run(capsys, "status", "--data-dir", h, "--json")
    assert [p["state"] for p in status["parties"]][2] == "stopped"
    code, third = run(capsys, "up", "--data-dir", h, "--json")
    assert [p["started"] for p in third["parties"]] == [False, False, True]

    code, kg = run(capsys, "keygen", "--data-dir", h, "--threshold", "2", "--parties", "3", "--json")
    assert code == 0 and kg["threshold"] == 2 and len(bytes.fromhex(kg["public_key"])) == 33
    code, pre = run(capsys, "presign", "--data-dir", h, "--key", kg["key_id"], "--signers", "1,3", "--count", "2",
                    "--json")
    assert code == 0 and len(pre["presignatures"]) == 2

    code, status = run(capsys, "status", "--data-dir", h, "--json")
    assert code == 0
    assert [(p["id"], p["state"]) for p in status["parties"]] == [(1, "idle"), (2, "idle"), (3, "idle")]
    assert all(isinstance(p["pid"], int) for p in status["parties"])
    assert [k["key_id"] for k in status["keys"]] == [kg["key_id"]]
    pools = status["presignatures"][kg["key_id"]]
    assert pools["1"] == pools["3"] == {"available": 2, "consumed": 0}

    digest = "ab" * 32
    code, sig = run(capsys, "sign", "--data-dir", h, "--key", kg["key_id"], "--digest", digest,
                    "--presig", pre["presignatures"][0], "--signers", "1,3", "--json")
    assert code == 0 and sig["public_key"] == kg["public_key"] and sig["digest"] == digest
    code, status = run(capsys, "status", "--data-dir", h, "--json")
    assert status["presignatures"][kg["key_id"]]["1"] == {"available": 1, "consumed": 1}

    code, down = run(capsys, "down", "--data-dir", h, "--json")
    assert code == 0 and set(down["stopped"]) == {"worker", "party-1", "party-2", "party-3", "nats-server"}
    code, status = run(capsys, "status", "--data-dir", h, "--json")
    assert {p["state"] for p in status["parties"]} == {"stopped"} and not status["nats"]["reachable"]

    # post-mortem on a copy of the store files, with nothing running
    copy = tmp_path / "copied"
    shutil.copytree(home, copy)
    code, rep = run(capsys, "replay", sig["execution"], "--data-dir", str(copy), "--json")
    assert code == 0 and rep["verdict"] == "completed at every participant"
    assert rep["parties"]["2"] == {"status": "no record"}
    events = {(e["party"], e["event"]) for e in rep["timeline"]}
    assert {(1, "Started"), (3, "Started"), (1, "Completed"), (3, "Completed")} <= events
    assert any(e["event"] == "MessageAccepted" and e["party"] == 1 and e["from"] == 3 for e in rep["timeline"])


def test_usage_errors(home, capsys):
    h = str(home)
    code, out = run(capsys, "status", "--data-dir", h, "--json")
    assert code == 2 and "conclave up" in out["error"]
    code, out = run(capsys, "sign", "--data-dir", h, "--key", "k", "--digest", "00", "--json")
    assert code == 2 and "32 bytes" in out["error"]
    Deployment(home).init(parties=3, threshold=2, level="dev-2048", nats_url=None, store=None, round_timeout=5.0,
                          prime_pool=POOL)
    code, out = run(capsys, "up", "--data-dir", h, "--parties", "4", "--json")
    assert code == 2 and "3-party deployment" in out["error"]
    code, out = run(capsys, "keygen", "--data-dir", h, "--threshold", "4", "--json")
    assert code == 2 and "threshold" in out["error"]
    code, out = run(capsys, "up", "--data-dir", h, "--nats", "nats://127.0.0.1:1", "--json")
    assert code == 2 and "embedded" in out["error"]


def test_demo_runs_end_to_end(capsys):
    code, out = run(capsys, "demo", "--security-level", "dev-2048", "--prime-pool", POOL, "--json")
    assert code == 0 and out["ok"] and not out["problems"], out.get("problems") or out.get("error")
    rows = out["withdrawals"]
    assert len(rows) == 13 and all(r["status"] == ("signed" if r["expected"] == "signed" else "rejected") for r in rows)
    signed = [r for r in rows if r["status"] == "signed" and not r["resubmitted"]]
    assert len(signed) == 6 and all(r["verified"] for r in signed)
    assert {r["chain"] for r in signed} == {"ethereum", "bitcoin"}
    rejected = sorted(r["rule"] for r in rows if r["status"] == "rejected")
    assert rejected == ["approvals", "destinations", "destinations", "initiator", "limits.max_per_tx",
                        "limits.max_per_tx"]
    dup = next(r for r in rows if r["resubmitted"])
    original = next(r for r in rows if r["request_id"] == dup["request_id"] and not r["resubmitted"])
    assert dup["tx_hash"] == original["tx_hash"]  # the original result, not a second signature
    assert out["duplicate"] == {"request_id": dup["request_id"], "broker_dropped_resubmission": True,
                                "resubmission_got_original": True, "requeued_result_is_original": True}
    assert out["policy"]["version"] == 1 and len(out["policy"]["digest"]) == 64
    assert not Path(out["data_dir"]).exists()  # the temporary deployment is gone


def test_operator_aborts_a_stalled_ceremony(home, capsys):
    import subprocess
    import sys

    h = str(home)
    code, up = run(capsys, "up", "--data-dir", h, "--security-level", "dev-2048", "--prime-pool", POOL, "--pool-high", "0",
                   "--round-timeout", "120", "--json")
    code, kg = run(capsys, "keygen", "--data-dir", h, "--json")
    assert code == 0
    dep = Deployment(home)
    dep.stop_pid(dep.party_pid(2))  # party 2 is gone: the sign below stalls in its first round
    sign = subprocess.Popen([sys.executable, "-m", "ops.cli", "sign", "--data-dir", h, "--key", kg["key_id"],
                             "--digest", "cd" * 32, "--signers", "1,2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 30
        flights = []
        while not flights and time.monotonic() < deadline:
            time.sleep(0.2)
            flights = run(capsys, "status", "--data-dir", h, "--json")[1]["ceremonies"]
        assert flights, "the sign never showed up as in flight"
        execution = flights[0]["execution"]
        assert flights[0]["parties"]["1"]["waiting_for"] == [2]

        code, ab = run(capsys, "abort", execution, "--data-dir", h, "--reason", "party 2 is being replaced",
                       "--wait", "3", "--json")
        assert code == 0 and ab["parties"]["1"]["status"] == "aborted"
        assert "coordinator aborted: party 2 is being replaced" in ab["parties"]["1"]["reason"]
        out, _ = sign.communicate(timeout=30)
    finally:
        sign.kill()
    assert sign.returncode == 3 and json.loads(out)["status"] == "aborted"
    code, rep = run(capsys, "replay", execution, "--data-dir", h, "--json")
    assert rep["parties"]["1"]["status"] == "aborted" and rep["parties"]["2"] == {"status": "no record"}
    assert run(capsys, "status", "--data-dir", h, "--json")[1]["ceremonies"] == []


PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


@pytest.fixture
def pg_schema():
    import uuid

    try:
        import psycopg

        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")
    schema = f"conclave_test_{uuid.uuid4().hex[:16]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


def test_parties_on_postgresql(home, capsys, pg_schema):
    """The same deployment with every party's events in PostgreSQL instead of SQLite files."""
    h = str(home)
    code, up = run(capsys, "up", "--data-dir", h, "--security-level", "dev-2048", "--prime-pool", POOL, "--pool-high", "0",
                   "--postgres", PG_DSN, "--postgres-schema", pg_schema, "--json")
    assert code == 0
    code, kg = run(capsys, "keygen", "--data-dir", h, "--json")
    assert code == 0
    code, sig = run(capsys, "sign", "--data-dir", h, "--key", kg["key_id"], "--digest", "ef" * 32, "--json")
    assert code == 0 and sig["public_key"] == kg["public_key"]
    assert not list(home.glob("party-*/events.sqlite")), "events went to SQLite files"
    run(capsys, "down", "--data-dir", h, "--json")
    code, rep = run(capsys, "replay", sig["execution"], "--data-dir", h, "--json")
    assert rep["verdict"] == "completed at every participant"
