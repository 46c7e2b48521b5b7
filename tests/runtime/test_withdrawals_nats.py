"""The withdrawal service end to end: real party and worker processes over an embedded nats-server.

One deployment (2 shards, pooled presignatures, a real policy) serves a stream of
200 mixed Ethereum and Bitcoin withdrawals, then loses a party mid-run. A second
deployment with the pool switched off shows the full presign + sign fallback.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from bitcoin.core import CScript, CTransaction
from bitcoin.core.script import SIGHASH_ALL, SIGVERSION_WITNESS_V0, SignatureHash
from coincurve import PrivateKey
from eth_account import Account

from engine import withdrawal as wd
from engine.chains import bitcoin
from engine.crypto import ecdsa
from handlers import withdrawals as wq
from handlers.jetstream import publish
from ops.cli import main
from ops.client import CeremonyFailed, Coordinator
from ops.deploy import Deployment
from schemas.withdrawal import WithdrawalRequest, WithdrawalResult
from tests.runtime.support import teardown_deployment

POOL = str(Path(__file__).resolve().parents[1] / "fixtures" / "safe_primes.json")
ALLOWED_ETH = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
OTHER_ETH = "0x" + "22" * 20
ALLOWED_BTC = bitcoin.address(PrivateKey(b"\x05" * 32).public_key.format(), "regtest")
POLICY = f"""
version = 1
[destinations]
allow = ["{ALLOWED_ETH}", "{ALLOWED_BTC}"]
[limits.ETH]
max_per_tx = "1000000000000000000"
[limits.BTC]
max_per_tx = 500000
""".encode()

pytestmark = pytest.mark.timeout(600)


def conclave(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if out else {})


def deploy(capsys, home: Path, *extra: str) -> tuple[Deployment, dict]:
    code, up = conclave(capsys, "up", "--data-dir", str(home), "--security-level", "dev-2048", "--prime-pool", POOL,
                        "--round-timeout", "20", *extra, "--json")
    assert code == 0, up
    code, key = conclave(capsys, "keygen", "--data-dir", str(home), "--json")
    assert code == 0, key
    return Deployment(home), key


def eth(rid: str, key_id: str, value: int = 1000, to: str = ALLOWED_ETH, path: str | None = None, nonce: int = 0):
    return WithdrawalRequest.from_json({
        "request_id": rid, "key_id": key_id, "path": path, "chain": "ethereum",
        "tx": {"chain_id": 1, "nonce": nonce, "to": to, "value": str(value), "gas": 21000,
               "max_fee_per_gas": "30000000000", "max_priority_fee_per_gas": "1000000000", "data": "0x"},
        "initiator": "exchange-hot", "approvals": [], "metadata": {"n": nonce}})


def btc(rid: str, key: dict, amount: int = 90000, path: str = "m/1", n: int = 0):
    change = wd.wallet_address(bytes.fromhex(key["public_key"]), "bitcoin", path, "regtest")
    return WithdrawalRequest.from_json({
        "request_id": rid, "key_id": key["key_id"], "path": path, "chain": "bitcoin",
        "tx": {"network": "regtest", "version": 2, "locktime": 0,
               "inputs": [{"txid": f"{n:064x}", "vout": 0, "amount": 80000, "sequence": 4294967293},
                          {"txid": f"{n + 1:064x}", "vout": 1, "amount": amount, "sequence": 4294967293}],
               "outputs": [{"address": ALLOWED_BTC, "amount": amount}, {"address": change, "amount": 79000}]},
        "initiator": "exchange-hot", "approvals": [], "metadata": {}})


async def stream(dep: Deployment, requests: list[WithdrawalRequest], timeout: float = 400.0,
                 extra_publishes: list[tuple[WithdrawalRequest, str]] = ()) -> dict[str, WithdrawalResult]:
    """Publish every request (plus raw re-publishes with other msg ids), then collect every result."""
    async with Coordinator(dep) as c:
        await wq.ensure_withdrawal_streams(c.js)
        for r in requests:
            await wq.submit(c.js, r, 2)
        for r, msg_id in extra_publishes:
            await publish(c.js, wq.withdrawal_subject(wq.shard_of(r.request_id, 2)), r.encode(), msg_id)
        results: dict[str, WithdrawalResult] = {}

        async def one(r: WithdrawalRequest) -> None:
            results[r.request_id] = await wq.wait_result(c.js, r.request_id, timeout)

        async with anyio.create_task_group() as tg:
            for r in {r.request_id: r for r in requests}.values():
                tg.start_soon(one, r)
        return results


def check_signed(key: dict, request: WithdrawalRequest, result: WithdrawalResult) -> None:
    prepared = wd.prepare(request, bytes.fromhex(key["public_key"]))
    if request.chain == "ethereum":
        assert Account.recover_transaction(result.raw_tx) == prepared.address
        return
    tx = CTransaction.deserialize(bytes.fromhex(result.raw_tx))
    code = CScript(bytes.fromhex("76a914") + bitcoin.hash160(prepared.public_key) + bytes.fromhex("88ac"))
    assert len(result.signatures) == len(request.tx.inputs)
    for i, inp in enumerate(request.tx.inputs):
        sighash = SignatureHash(code, tx, i, SIGHASH_ALL, amount=inp.amount, sigversion=SIGVERSION_WITNESS_V0)
        sig = result.signatures[i]
        assert ecdsa.verify_digest(prepared.public_key, sighash, int(sig["r"], 16), int(sig["s"], 16),
                                   require_low_s=True)
        witness = tx.wit.vtxinwit[i].scriptWitness.stack
        assert witness[1] == prepared.public_key and witness[0][-1] == SIGHASH_ALL


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    home = tmp_path_factory.mktemp("withdrawals") / "conclave"
    try:
        code = main(["up", "--data-dir", str(home), "--security-level", "dev-2048", "--prime-pool", POOL,
                     "--round-timeout", "20", "--shards", "2", "--pool-low", "4", "--pool-high", "12", "--json"])
        assert code == 0
        dep = Deployment(home)
        key = anyio.run(_keygen, dep)
        policy = home / "policy.toml"
        policy.write_bytes(POLICY)
        assert main(["policy", "apply", "--data-dir", str(home), "--key", key["key_id"], str(policy)]) == 0
        yield dep, key
    finally:
        teardown_deployment(home)


async def _keygen(dep: Deployment) -> dict:
    async with Coordinator(dep) as c:
        out = await c.run("keygen", dep.party_ids(), {"threshold": 2})
    return out.result


def test_two_hundred_withdrawals_across_two_shards(pooled):
    dep, key = pooled
    kid = key["key_id"]
    requests: list[WithdrawalRequest] = []
    expect: dict[str, str | None] = {}  # request id -> the rule that must refuse it, None: must sign
    for n in range(200):
        rid = f"e2e-{n}"
        if n % 20 == 0:
            r, rule = eth(rid, kid, value=2 * 10**18, nonce=n), "limits.max_per_tx"
        elif n % 20 == 1:
            r, rule = eth(rid, kid, to=OTHER_ETH, nonce=n), "destinations"
        elif n % 20 == 2:
            r, rule = btc(rid, key, amount=600000, n=2 * n), "limits.max_per_tx"
        elif n % 4 == 3:
            r, rule = btc(rid, key, n=2 * n, path=f"m/1/{n}"), None
        else:
            r, rule = eth(rid, kid, path=f"m/0/{n}", nonce=n), None
        requests.append(r)
        expect[rid] = rule
    # the same request id again: once within the broker's duplicate window (dropped there),
    # and once under another message id, as a replay after the window would arrive
    dup = requests[5]
    altered = eth(dup.request_id, kid, value=999, nonce=5)
    t0 = time.monotonic()
    results = anyio.run(lambda: stream(dep, requests + [dup], extra_publishes=[
        (dup, "replayed-later"), (altered, "altered-later")]))
    seconds = time.monotonic() - t0
    assert set(results) == set(expect)
    shards = {wq.shard_of(rid, 2) for rid in expect}
    assert shards == {0, 1}
    for r in requests:
        res = results[r.request_id]
        rule = expect[r.request_id]
        if rule is None:
            assert res.status == "signed", (r.request_id, res.reason)
            check_signed(key, r, res)
        else:
            assert res.status == "rejected" and res.rule == rule, (r.request_id, res.status, res.rule, res.reason)
            assert res.raw_tx is None and res.reason
    # the replays got the original result: one request id, one signature; the altered body was never signed
    assert results[dup.request_id].request_hash == dup.request_hash().hex()
    again = anyio.run(lambda: stream(dep, [altered], timeout=30))[dup.request_id]
    assert again == results[dup.request_id] and again.request_hash != altered.request_hash().hex()
    statuses = [results[r].status for r in expect]
    print(f"200 withdrawals in {seconds:.1f}s: {statuses.count('signed')} signed, "
          f"{statuses.count('rejected')} rejected")


def test_a_party_killed_mid_run_does_not_stop_the_run(pooled, capsys):
    dep, key = pooled
    requests = [eth(f"kill-{n}", key["key_id"], nonce=n) for n in range(30)]

    async def run() -> dict[str, WithdrawalResult]:
        async with anyio.create_task_group() as tg:
            results: dict[str, WithdrawalResult] = {}

            async def go():
                results.update(await stream(dep, requests, timeout=300))

            tg.start_soon(go)
            await anyio.sleep(1.0)
            os.kill(dep.party_pid(2), signal.SIGKILL)  # party 2 is in the pool's quorum (1, 2)
        return results

    results = anyio.run(run)
    try:
        assert {r.status for r in results.values()} == {"signed"}, [r.reason for r in results.values()]
        for r in requests:
            check_signed(key, r, results[r.request_id])
        later = [r for r in results.values() if 2 in r.culprits]
        print(f"{len(later)} of 30 requests retried without party 2")
    finally:
        assert main(["up", "--data-dir", str(dep.home)]) == 0  # bring party 2 back for the next test
        capsys.readouterr()


def test_every_party_refuses_a_digest_that_does_not_match_the_fields(pooled):
    dep, key = pooled
    request = eth("digest-lie", key["key_id"])
    prepared = wd.prepare(request, bytes.fromhex(key["public_key"]))
    with open(dep.policy_dir(1) / f"{key['key_id']}.toml", "rb") as f:
        from engine.policy import load_policy

        policy = load_policy(f.read()).digest

    async def attempt(quorum):
        async with Coordinator(dep) as c:
            with pytest.raises(CeremonyFailed) as info:
                await c.run("sign", quorum, {"key_id": key["key_id"], "digest": bytes(32), "input": 0,
                                             "withdrawal": request.encode(), "policy": policy}, round_timeout=5)
            return info.value

    for quorum in ((1, 2), (2, 3)):
        exc = anyio.run(attempt, quorum)
        assert exc.status == "rejected"
        assert {p: r["rule"] for p, r in exc.reports.items()} == {p: "digest" for p in quorum}
    assert prepared.digests[0] != bytes(32)


def test_a_drained_pool_falls_back_to_a_full_presign(tmp_path, capsys):
    home = tmp_path / "conclave"
    try:
        dep, key = deploy(capsys, home, "--pool-high", "0")
        results = anyio.run(lambda: stream(dep, [eth(f"np-{n}", key["key_id"], nonce=n) for n in range(3)]))
        for rid, res in results.items():
            assert res.status == "signed", res.reason
            check_signed(key, eth(rid, key["key_id"], nonce=int(rid.split("-")[1])), res)
        code, st = conclave(capsys, "status", "--data-dir", str(home), "--json")
        assert st["pools"] == {}
        # no pooled presignature was made or spent: each sign ran its own presign phase
        assert all(p == {} or all(v["available"] == 0 for v in p.values()) for p in [st["presignatures"]])
    finally:
        teardown_deployment(home)


def test_conclave_withdraw_returns_a_transaction_from_the_wallet_address(pooled, capsys, tmp_path):
    dep, key = pooled
    home = str(dep.home)
    code, addr = conclave(capsys, "address", "--data-dir", home, "--key", key["key_id"], "--path", "m/0/7", "--json")
    assert code == 0 and addr["address"].startswith("0x")
    request = tmp_path / "w.json"
    request.write_text(json.dumps(eth("cli-1", key["key_id"], path="m/0/7").to_json()))
    code, out = conclave(capsys, "withdraw", "--data-dir", home, "--request", str(request), "--json")
    assert code == 0 and out["status"] == "signed", out
    assert set(out) >= {"request_id", "status", "raw_tx", "tx_hash", "signature", "reason", "culprits", "attempts"}
    assert Account.recover_transaction(out["raw_tx"]) == addr["address"]  # eth-account, not our code
    request.write_text(json.dumps(eth("cli-1", key["key_id"], path="m/0/7", value=1).to_json()))
    code, reused = conclave(capsys, "withdraw", "--data-dir", home, "--request", str(request), "--json")
    assert code == 2 and "already used for a different request" in reused["error"]
    assert reused["original"]["raw_tx"] == out["raw_tx"]
    code, refused = conclave(capsys, "withdraw", "--data-dir", home, "--key", key["key_id"], "--request-id", "cli-2",
                             "--to", OTHER_ETH, "--value", "5", "--json")
    assert code == 3 and refused["status"] == "rejected" and refused["rule"] == "destinations"
    code, bad = conclave(capsys, "withdraw", "--data-dir", home, "--key", key["key_id"], "--json")
    assert code == 2 and "--to" in bad["error"]
    # an SRE reads each party's decision from its event store
    code, rep = conclave(capsys, "replay", "--data-dir", home, "--request", "cli-2", "--json")
    assert code == 0 and rep["verdict"].startswith("refused: party") and "destinations" in rep["verdict"]
    decided = [e for e in rep["timeline"] if e["event"] == "Decided"]
    assert len(decided) == 2 and not any(e["allowed"] for e in decided) and decided[0]["policy_version"] == 1
    code, rep = conclave(capsys, "replay", "--data-dir", home, "--request", "cli-1", "--json")
    assert rep["verdict"] == "signed by parties [1, 2]"


def test_a_request_that_cannot_be_signed_is_dead_lettered(pooled, capsys):
    dep, key = pooled
    for i in (2, 3):
        os.kill(dep.party_pid(i), signal.SIGKILL)
    time.sleep(4)  # the worker's health view forgets a party after 3 s of silence
    try:
        result = anyio.run(lambda: stream(dep, [eth("doomed", key["key_id"])], timeout=120))["doomed"]
        assert result.status == "failed" and result.raw_tx is None
        assert "fewer than 2 healthy parties" in result.reason and result.attempts == 4

        async def deadletter():
            async with Coordinator(dep) as c:
                msg = await c.js.get_last_msg(wq.DEADLETTER_STREAM, wq.deadletter_subject("doomed"))
                return WithdrawalResult.from_json(msg.data)

        assert anyio.run(deadletter) == result
    finally:
        assert main(["up", "--data-dir", str(dep.home)]) == 0
        capsys.readouterr()


def test_an_external_broker_signs_only_under_an_explicit_policy(nats_server, tmp_path, capsys):
    home = tmp_path / "conclave"
    try:
        dep, key = deploy(capsys, home, "--nats", nats_server.url, "--pool-high", "0")
        code, refused = conclave(capsys, "withdraw", "--data-dir", str(home), "--key", key["key_id"],
                                 "--request-id", "ext-1", "--to", ALLOWED_ETH, "--value", "5", "--json")
        assert code == 3 and refused["status"] == "rejected" and refused["rule"] == "policy"
        assert "no policy installed" in refused["reason"]
        code, st = conclave(capsys, "status", "--data-dir", str(home), "--json")
        assert any("no policy installed" in w for w in st["warnings"])
        policy = tmp_path / "policy.toml"
        policy.write_bytes(POLICY)
        assert conclave(capsys, "policy", "apply", "--data-dir", str(home), "--key", key["key_id"], str(policy),
                        "--json")[0] == 0
        time.sleep(2.5)  # parties refresh their status every second; the worker polls it every second
        code, signed = conclave(capsys, "withdraw", "--data-dir", str(home), "--key", key["key_id"],
                                "--request-id", "ext-2", "--to", ALLOWED_ETH, "--value", "5", "--json")
        assert code == 0 and signed["status"] == "signed", signed
        code, st = conclave(capsys, "status", "--data-dir", str(home), "--json")
        assert st["warnings"] == []
    finally:
        teardown_deployment(home)


def test_two_workers_one_shard_each_never_take_the_same_presignature(pooled, capsys):
    dep, key = pooled
    dep.stop_pid(dep.worker_pid())  # `conclave up`'s worker owns both shards; split them
    workers = {name: dep.start_worker([shard], name=name) for shard, name in ((0, "worker-a"), (1, "worker-b"))}
    try:
        for name, pid in workers.items():
            dep.wait_worker_ready(pid, name)
        code, before = conclave(capsys, "status", "--data-dir", str(dep.home), "--json")
        requests = [eth(f"two-{n}", key["key_id"], nonce=n) for n in range(40)]
        assert {wq.shard_of(r.request_id, 2) for r in requests} == {0, 1}
        results = anyio.run(lambda: stream(dep, requests, timeout=300))
        assert {r.status for r in results.values()} == {"signed"}
        for r in requests:
            check_signed(key, r, results[r.request_id])
        code, after = conclave(capsys, "status", "--data-dir", str(dep.home), "--json")
        # a presignature reserved twice would have been refused by the parties ("already used"),
        # which each party records as a rejected message
        rejected = {p["id"]: p["rejected_messages"] for p in after["parties"]}
        assert rejected == {p["id"]: p["rejected_messages"] for p in before["parties"]}
        assert set(after["workers"]) >= {"worker-a", "worker-b"}
        logs = {n: (dep.home / "worker" / f"{n}.log").read_text() for n in workers}
        assert all(log.count("signed") > 0 for log in logs.values()), "each worker served its own shard"
    finally:
        for name, pid in workers.items():
            dep.stop_pid(pid)
        assert main(["up", "--data-dir", str(dep.home)]) == 0
        capsys.readouterr()
