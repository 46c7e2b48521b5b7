"""Withdrawals at the party: each party rebuilds the digest, checks its own policy, records the decision."""

from __future__ import annotations

from coincurve import PrivateKey
from eth_account import Account

from engine import withdrawal as wd
from engine.ceremony.policies import PolicyBook
from engine.ceremony.store import WithdrawalRecord
from engine.crypto import ecdsa
from engine.policy import DEV_POLICY, load_policy
from schemas.withdrawal import WithdrawalRequest
from tests.ceremony.conftest import KEY_ID, digest_of

TO = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"

STRICT = f"""
version = 7
[destinations]
allow = ["{TO}"]
[limits.ETH]
max_per_tx = "1000000000000000000"
""".encode()


def eth_request(request_id: str = "w-1", value: int = 1000, path: str | None = "m/0/7", to: str = TO) -> WithdrawalRequest:
    return WithdrawalRequest.from_json({
        "request_id": request_id, "key_id": KEY_ID, "path": path, "chain": "ethereum",
        "tx": {"chain_id": 1, "nonce": 0, "to": to, "value": str(value), "gas": 21000,
               "max_fee_per_gas": "30000000000", "max_priority_fee_per_gas": "1000000000", "data": "0x"},
        "initiator": "exchange-hot", "approvals": [], "metadata": {"ticket": 17}})


def group_key(c) -> bytes:
    return bytes.fromhex(c.rt(1).status()["keys"][0]["public_key"])


def sign_withdrawal(c, execution, request, *, digest=None, policy=DEV_POLICY.digest, signers=(1, 2), input_=0):
    prepared = wd.prepare(request, group_key(c))
    params = {"withdrawal": request.encode(), "input": input_, "policy": policy,
              "digest": digest if digest is not None else prepared.digests[input_]}
    return prepared, c.sign(execution, signers, params.pop("digest"), **params)


def install(c, tmp_path, text: bytes, parties=(1, 2, 3)) -> None:
    for i in parties:
        c.rt(i).policies = PolicyBook(tmp_path / f"policies-{i}", allow_dev=False)
        c.rt(i).policies.install(KEY_ID, text)


def test_a_withdrawal_signs_for_the_derived_address(sqlite_cluster):
    c = sqlite_cluster
    request = eth_request()
    prepared, out = sign_withdrawal(c, "s-1", request)
    assert {o["status"] for o in out.values()} == {"completed"}
    res = out[1]["result"]
    assert res["request_id"] == "w-1" and res["input"] == 0
    assert res["public_key"] == prepared.public_key.hex() != group_key(c).hex()
    raw, tx_hash = wd.assemble(prepared, [(int(res["r"], 16), int(res["s"], 16), res["v"])])
    assert Account.recover_transaction(raw) == prepared.address  # an independent library agrees
    assert ecdsa.is_releasable(prepared.public_key, prepared.digests[0], int(res["r"], 16), int(res["s"], 16),
                               res["v"])
    for i in (1, 2):
        events = c.stores[i].timeline(WithdrawalRecord, request_id="w-1")
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["Received", "Decided", "Signed"]
        assert events[1].allowed and events[1].rule == "dev-policy"


def test_every_party_refuses_a_digest_that_is_not_the_transactions(sqlite_cluster):
    c = sqlite_cluster
    _, out = sign_withdrawal(c, "s-2", eth_request(), digest=digest_of("something else"), signers=(1, 3))
    assert set(out) == {1, 3}
    for o in out.values():
        assert o["status"] == "rejected" and o["reason"].startswith("digest mismatch") and o["rule"] == "digest"


def test_a_policy_violation_is_refused_and_recorded_by_each_party(sqlite_cluster, tmp_path):
    c = sqlite_cluster
    install(c, tmp_path, STRICT)
    strict = load_policy(STRICT)
    _, out = sign_withdrawal(c, "s-3", eth_request(value=2 * 10**18), policy=strict.digest)
    for i in (1, 2):
        assert out[i]["status"] == "rejected" and out[i]["rule"] == "limits.max_per_tx"
        assert "exceeds max_per_tx" in out[i]["reason"]
        (dec,) = [e for e in c.stores[i].timeline(WithdrawalRecord, request_id="w-1") if type(e).__name__ == "Decided"]
        assert not dec.allowed and dec.rule == "limits.max_per_tx" and dec.policy_version == 7
    _, out = sign_withdrawal(c, "s-4", eth_request("w-2", to="0x" + "11" * 20), policy=strict.digest)
    assert {o["rule"] for o in out.values()} == {"destinations"}
    _, out = sign_withdrawal(c, "s-5", eth_request("w-3"), policy=strict.digest)
    assert {o["status"] for o in out.values()} == {"completed"}


def test_parties_with_different_policies_cannot_sign_together(sqlite_cluster, tmp_path):
    c = sqlite_cluster
    install(c, tmp_path, STRICT, parties=(1, 3))
    install(c, tmp_path, STRICT.replace(b"version = 7", b"version = 8"), parties=(2,))
    _, out = sign_withdrawal(c, "s-6", eth_request(), policy=load_policy(STRICT).digest)
    assert out[2]["status"] == "rejected" and out[2]["rule"] == "policy-version"
    assert 1 not in out  # party 1 waits for party 2's round-1 messages, which never come


def test_without_a_policy_an_external_deployment_refuses(sqlite_cluster, tmp_path):
    c = sqlite_cluster
    for i in (1, 2):
        c.rt(i).policies = PolicyBook(tmp_path / "none", allow_dev=False)
    _, out = sign_withdrawal(c, "s-7", eth_request())
    assert {o["status"] for o in out.values()} == {"rejected"}
    assert "no policy installed" in out[1]["reason"]


def test_a_wallet_with_a_policy_does_not_sign_bare_digests(sqlite_cluster, tmp_path):
    c = sqlite_cluster
    install(c, tmp_path, STRICT)
    out = c.sign("s-8", (1, 2), digest_of("bare"))
    assert {o["status"] for o in out.values()} == {"rejected"}
    assert "not bare digests" in out[1]["reason"]


def test_one_request_input_is_signed_at_most_once(sqlite_cluster):
    c = sqlite_cluster
    request = eth_request()
    _, first = sign_withdrawal(c, "s-9", request)
    assert first[1]["status"] == "completed"
    _, again = sign_withdrawal(c, "s-10", request, signers=(1, 3))
    assert again[1]["status"] == "rejected" and "already signed in s-9" in again[1]["reason"]
    assert 3 not in again  # party 3 waits in presign for party 1, which refused
    # the record survives a restart
    c.crash(1)
    c.add(1).recover()
    _, third = sign_withdrawal(c, "s-11", request)
    assert third[1]["status"] == "rejected" and third[1]["rule"] == "idempotency"


def test_a_bitcoin_withdrawal_signs_every_input(sqlite_cluster):
    from bitcoin.core import CScript, CTransaction
    from bitcoin.core.script import SIGHASH_ALL, SIGVERSION_WITNESS_V0, SignatureHash

    from engine.chains import bitcoin

    c = sqlite_cluster
    key = group_key(c)
    own = wd.wallet_address(key, "bitcoin", "m/1", "regtest")
    request = WithdrawalRequest.from_json({
        "request_id": "b-1", "key_id": KEY_ID, "path": "m/1", "chain": "bitcoin",
        "tx": {"network": "regtest", "version": 2, "locktime": 0,
               "inputs": [{"txid": "aa" * 32, "vout": 0, "amount": 60000, "sequence": 4294967293},
                          {"txid": "bb" * 32, "vout": 1, "amount": 50000, "sequence": 4294967293}],
               "outputs": [{"address": bitcoin.address(PrivateKey(b"\x07" * 32).public_key.format(), "regtest"), "amount": 90000},
                           {"address": own, "amount": 19000}]},
        "initiator": "exchange-hot", "approvals": [], "metadata": {}})
    prepared = wd.prepare(request, key)
    sigs = []
    for i in range(2):
        _, out = sign_withdrawal(c, f"b-{i}", request, input_=i)
        res = out[1]["result"]
        sigs.append((int(res["r"], 16), int(res["s"], 16), res["v"]))
    raw, txid = wd.assemble(prepared, sigs)
    tx = CTransaction.deserialize(bytes.fromhex(raw))
    code = CScript(bytes.fromhex("76a914") + bitcoin.hash160(prepared.public_key) + bytes.fromhex("88ac"))
    for i, inp in enumerate(request.tx.inputs):
        h = SignatureHash(code, tx, i, SIGHASH_ALL, amount=inp.amount, sigversion=SIGVERSION_WITNESS_V0)
        r, s, _ = sigs[i]
        assert ecdsa.verify_digest(prepared.public_key, h, r, s, require_low_s=True)


def test_a_request_input_being_signed_cannot_start_again(sqlite_cluster):
    c = sqlite_cluster
    request = eth_request()
    prepared = wd.prepare(request, group_key(c))
    params = {"key_id": KEY_ID, "digest": prepared.digests[0], "withdrawal": request.encode(), "input": 0,
              "policy": DEV_POLICY.digest}
    c.start("s-a", "sign", (1, 2), params)
    c.start("s-b", "sign", (1, 3), params)
    assert c.deliver_next(1)[1].endswith("s-a.start.all")
    c.rt(1).reset_cache()  # the guard must also see a running ceremony that is not in the cache
    c.run()
    assert {o["status"] for o in c.outcomes("s-a").values()} == {"completed"}
    assert c.outcomes("s-b")[1]["reason"] == "request w-1 input 0 is being signed in s-a"
