"""Withdrawal request/result contract: strict decoding, canonical encoding, approvals."""

from __future__ import annotations

import copy
import json

import coincurve
import pytest

from schemas.withdrawal import (
    MAX_REQUEST_BYTES,
    Approval,
    BitcoinTx,
    EthereumTx,
    RequestError,
    WithdrawalRequest,
    WithdrawalResult,
    sign_approval,
    verify_approval,
)

ETH = {
    "request_id": "w-1", "key_id": "hot:eth.1", "path": "m/0/7", "chain": "ethereum",
    "tx": {"chain_id": 1, "nonce": 0, "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "value": "1000",
           "gas": 21000, "max_fee_per_gas": "30000000000", "max_priority_fee_per_gas": "1000000000", "data": "0x"},
    "initiator": "exchange-hot", "approvals": [], "metadata": {"ticket": "T-9", "n": [1, 2.5, None, True]},
}
BTC = {
    "request_id": "w-2", "key_id": "hot-btc", "chain": "bitcoin",
    "tx": {"network": "regtest",
           "inputs": [{"txid": "aa" * 32, "vout": 0, "amount": 100000},
                      {"txid": "BB" * 32, "vout": 3, "amount": 50000, "sequence": 0xFFFFFFFF}],
           "outputs": [{"address": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "amount": 90000},
                       {"address": "bcrt1qchange", "amount": 59000}]},
    "initiator": "alice",
}
SECRET = (7).to_bytes(32, "big")
XONLY = coincurve.PrivateKey(SECRET).public_key_xonly.format()


def req(base: dict, **changes: object) -> dict:
    d = copy.deepcopy(base)
    d.update(changes)
    return d


def tx(base: dict, **changes: object) -> dict:
    d = copy.deepcopy(base)
    d["tx"].update(changes)
    return d


def error(data: object) -> str:
    with pytest.raises(RequestError) as e:
        WithdrawalRequest.from_json(data)  # type: ignore[arg-type]
    return str(e.value)


# ---------------------------------------------------------------- round trips


def test_ethereum_round_trip() -> None:
    r = WithdrawalRequest.from_json(ETH)
    assert isinstance(r.tx, EthereumTx)
    assert r.tx.value == 1000 and r.tx.max_fee_per_gas == 30_000_000_000 and r.tx.data == b""
    assert r.tx.to == ETH["tx"]["to"]  # checksum case kept
    assert r.asset == "ETH" and r.network is None
    assert r.to_json() == ETH
    assert WithdrawalRequest.from_json(r.to_json()) == r
    assert WithdrawalRequest.from_json(r.encode()) == r
    assert WithdrawalRequest.from_json(r.encode().decode()) == r
    assert r.encode() == json.dumps(ETH, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_ethereum_integers_and_data_normalised() -> None:
    r = WithdrawalRequest.from_json(tx(ETH, value=2**256 - 1, max_fee_per_gas=5, data="0xDEADbeef"))
    j = r.to_json()
    assert j["tx"]["value"] == str(2**256 - 1) and j["tx"]["max_fee_per_gas"] == "5"
    assert j["tx"]["data"] == "0xdeadbeef"
    assert WithdrawalRequest.from_json(j) == r


def test_bitcoin_round_trip_and_defaults() -> None:
    r = WithdrawalRequest.from_json(BTC)
    assert isinstance(r.tx, BitcoinTx)
    assert r.tx.version == 2 and r.tx.locktime == 0
    assert r.tx.inputs[0].sequence == 0xFFFFFFFD and r.tx.inputs[1].sequence == 0xFFFFFFFF
    assert r.tx.inputs[1].txid == "bb" * 32
    assert r.path is None and r.approvals == () and r.metadata == {}
    assert r.asset == "BTC" and r.network == "regtest"
    j = r.to_json()
    assert j["path"] is None and j["approvals"] == [] and j["metadata"] == {}
    assert j["tx"]["version"] == 2 and j["tx"]["inputs"][0]["sequence"] == 0xFFFFFFFD
    assert WithdrawalRequest.from_json(j) == r
    assert WithdrawalRequest.from_json(r.encode()) == r
    hash(r)  # usable as a dict key despite the metadata dict


def test_metadata_is_copied() -> None:
    d = req(ETH)
    r = WithdrawalRequest.from_json(d)
    d["metadata"]["ticket"] = "changed"
    r.to_json()["metadata"]["ticket"] = "changed too"
    assert r.metadata["ticket"] == "T-9"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("data", "field"), [
    (req(ETH, request_id="w.1"), "request_id:"),
    (req(ETH, request_id="w:1"), "request_id:"),
    (req(ETH, request_id=""), "request_id:"),
    (req(ETH, request_id="x" * 81), "request_id:"),
    (req(ETH, key_id="k/1"), "key_id:"),
    (req(ETH, path=7), "path:"),
    (req(ETH, path="m" * 201), "path:"),
    (req(ETH, chain="solana"), "chain:"),
    (req(ETH, tx=[]), "tx:"),
    (req(ETH, initiator=""), "initiator:"),
    (req(ETH, initiator="x" * 201), "initiator:"),
    (req(ETH, metadata=[]), "metadata:"),
    (req(ETH, approvals={}), "approvals:"),
    (req(ETH, approvals=[{"approver": "ops-1", "signature": "00" * 63}]), "approvals[0].signature:"),
    (req(ETH, approvals=[{"approver": "ops-1", "signature": "zz" * 64}]), "approvals[0].signature:"),
    (req(ETH, approvals=[{"approver": "ops 1", "signature": "00" * 64}]), "approvals[0].approver:"),
    (req(ETH, approvals=[{"approver": "ops-1"}]), "approvals[0].signature: required"),
    (req(ETH, approvals=[{"approver": "a", "signature": "00" * 64}] * 33), "approvals:"),
    (tx(ETH, value="-1"), "tx.value: must be a decimal string or integer"),
    (tx(ETH, value="1e18"), "tx.value:"),
    (tx(ETH, value=" 1"), "tx.value:"),
    (tx(ETH, value="1_000"), "tx.value:"),
    (tx(ETH, value=1.5), "tx.value:"),
    (tx(ETH, value=2**256), "tx.value:"),
    (tx(ETH, value=-1), "tx.value:"),
    (tx(ETH, max_fee_per_gas=None), "tx.max_fee_per_gas:"),
    (tx(ETH, max_priority_fee_per_gas=str(2**256)), "tx.max_priority_fee_per_gas:"),
    (tx(ETH, gas=2**64), "tx.gas:"),
    (tx(ETH, gas="21000"), "tx.gas:"),
    (tx(ETH, nonce=-1), "tx.nonce:"),
    (tx(ETH, chain_id=0), "tx.chain_id:"),
    (tx(ETH, to="0x1234"), "tx.to:"),
    (tx(ETH, to="5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed00"), "tx.to:"),
    (tx(ETH, data="0xabc"), "tx.data:"),
    (tx(ETH, data="abcd"), "tx.data:"),
    (tx(BTC, network="main"), "tx.network:"),
    (tx(BTC, version=2**32), "tx.version:"),
    (tx(BTC, locktime=-1), "tx.locktime:"),
    (tx(BTC, inputs=[]), "tx.inputs:"),
    (tx(BTC, outputs=[]), "tx.outputs:"),
    (tx(BTC, outputs=[{"address": "bcrt1q", "amount": 1}] * 257), "tx.outputs:"),
    (tx(BTC, inputs=[{"txid": "aa" * 31, "vout": 0, "amount": 1}]), "tx.inputs[0].txid:"),
    (tx(BTC, inputs=[{"txid": "aa" * 32, "vout": 2**32, "amount": 1}]), "tx.inputs[0].vout:"),
    (tx(BTC, inputs=[{"txid": "aa" * 32, "vout": 0, "amount": 0}]), "tx.inputs[0].amount:"),
    (tx(BTC, inputs=[{"txid": "aa" * 32, "vout": 0, "amount": 21 * 10**14 + 1}]), "tx.inputs[0].amount:"),
    (tx(BTC, inputs=[{"txid": "aa" * 32, "vout": 0, "amount": 5, "sequence": 2**32}]), "tx.inputs[0].sequence:"),
    (tx(BTC, inputs=[{"txid": "aa" * 32, "vout": 0, "amount": 10**6}] * 2), "tx.inputs[1]: duplicate outpoint"),
    (tx(BTC, outputs=[{"address": "", "amount": 1}]), "tx.outputs[0].address:"),
    (tx(BTC, outputs=[{"address": "bcrt1q", "amount": "1"}]), "tx.outputs[0].amount:"),
    (tx(BTC, outputs=[{"address": "bcrt1q", "amount": 10**6}]), "tx.outputs: total"),
])
def test_validation_errors_name_the_field(data: dict, field: str) -> None:
    assert error(data).startswith(field)


@pytest.mark.parametrize(("data", "field"), [
    (req(ETH, extra=1), "extra: unknown field"),
    (tx(ETH, gas_price="1"), "tx.gas_price: unknown field"),
    (tx(BTC, fee=1), "tx.fee: unknown field"),
    (tx(BTC, inputs=[{"txid": "aa" * 32, "vout": 0, "amount": 5, "script": ""}]), "tx.inputs[0].script: unknown"),
    (req(ETH, approvals=[{"approver": "a", "signature": "00" * 64, "x": 1}]), "approvals[0].x: unknown field"),
])
def test_unknown_fields_rejected(data: dict, field: str) -> None:
    assert error(data).startswith(field)


def test_missing_fields() -> None:
    d = req(ETH)
    del d["initiator"]
    assert error(d) == "initiator: required"
    d = req(ETH)
    del d["tx"]["nonce"]
    assert error(d) == "tx.nonce: required"


@pytest.mark.parametrize("name", ["nonce", "gas", "chain_id", "value"])
def test_bool_is_not_an_int(name: str) -> None:
    assert error(tx(ETH, **{name: True})).startswith(f"tx.{name}:")


def test_bool_is_not_a_bitcoin_int() -> None:
    assert error(tx(BTC, version=True)).startswith("tx.version:")
    assert error(tx(BTC, outputs=[{"address": "bcrt1q", "amount": True}])).startswith("tx.outputs[0].amount:")


def test_invalid_json_and_duplicates() -> None:
    assert error(b"{not json").startswith("request: invalid JSON")
    assert error(b"\xff\xfe").startswith("request: invalid JSON")
    assert error("[]") == "request: must be a JSON object"
    assert error("\ud800").startswith("request: must be UTF-8")
    assert error(5).startswith("request: must be UTF-8")
    assert error('{"a": 1}'.encode("utf-16")).startswith("request: invalid JSON")
    assert error('{"a": ' + "1" * 5000 + "}").startswith("request: invalid JSON")
    # deep nesting is a clean error either way: a RecursionError, or (under a raised recursion limit) not an object
    assert error("[" * 5000 + "]" * 5000).startswith(("request: invalid JSON", "request: must be a JSON object"))
    assert error('{"request_id": "a", "request_id": "b"}') == "request_id: duplicate key"
    assert error(json.dumps(ETH).replace('"metadata": {', '"metadata": {"x": NaN, ')).startswith("request: NaN")
    with pytest.raises(RequestError, match="metadata"):
        WithdrawalRequest.from_json(req(ETH, metadata={"x": float("inf")}))
    with pytest.raises(RequestError, match="metadata"):
        WithdrawalRequest.from_json(req(ETH, metadata={"x": object()}))
    with pytest.raises(RequestError, match="metadata"):
        WithdrawalRequest.from_json(req(ETH, metadata={1: "int key"}))


def test_oversize_rejected() -> None:
    big = req(ETH, metadata={"blob": "x" * MAX_REQUEST_BYTES})
    assert error(json.dumps(big)).startswith("request: larger than")
    assert error(big).startswith("request: canonical JSON is")
    just_fits = req(ETH, metadata={"blob": ""})
    room = MAX_REQUEST_BYTES - len(WithdrawalRequest.from_json(just_fits).encode())
    assert len(WithdrawalRequest.from_json(req(ETH, metadata={"blob": "x" * room})).encode()) == MAX_REQUEST_BYTES
    assert error(req(ETH, metadata={"blob": "x" * (room + 1)})).startswith("request:")


# ---------------------------------------------------------------- request hash and approvals


def test_hash_excludes_approvals() -> None:
    r = WithdrawalRequest.from_json(ETH)
    h = r.request_hash()
    assert len(h) == 32
    signed = r.with_approvals([sign_approval(r, "ops-1", SECRET)])
    assert signed.request_hash() == h
    assert signed != r and signed.encode() != r.encode()


@pytest.mark.parametrize("data", [
    req(ETH, request_id="w-2"), req(ETH, key_id="other"), req(ETH, path=None), req(ETH, path="m/0/8"),
    req(ETH, initiator="someone"), req(ETH, metadata={}), tx(ETH, nonce=1), tx(ETH, value="1001"),
    tx(ETH, chain_id=5), tx(ETH, data="0x00"), tx(ETH, gas=21001),
    tx(ETH, to="0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"),  # even the checksum case is bound
])
def test_hash_changes_with_any_other_field(data: dict) -> None:
    assert WithdrawalRequest.from_json(data).request_hash() != WithdrawalRequest.from_json(ETH).request_hash()


def test_bitcoin_hash_changes() -> None:
    base = WithdrawalRequest.from_json(BTC).request_hash()
    assert WithdrawalRequest.from_json(tx(BTC, locktime=1)).request_hash() != base
    assert WithdrawalRequest.from_json(tx(BTC, network="testnet")).request_hash() != base
    d = tx(BTC)
    d["tx"]["outputs"][0]["amount"] -= 1
    assert WithdrawalRequest.from_json(d).request_hash() != base


def test_approval_sign_and_verify() -> None:
    r = WithdrawalRequest.from_json(ETH)
    a = sign_approval(r, "ops-1", SECRET)
    assert a.approver == "ops-1" and len(a.signature) == 64
    assert verify_approval(r.request_hash(), a, XONLY)
    r2 = WithdrawalRequest.from_json(r.with_approvals([a]).encode())
    assert r2.approvals == (a,)
    assert verify_approval(r2.request_hash(), r2.approvals[0], XONLY)


def test_tampered_approval_fails() -> None:
    r = WithdrawalRequest.from_json(ETH)
    a = sign_approval(r, "ops-1", SECRET)
    other = WithdrawalRequest.from_json(tx(ETH, value="1001"))
    assert not verify_approval(other.request_hash(), a, XONLY)
    flipped = Approval(a.approver, a.signature[:-1] + bytes([a.signature[-1] ^ 1]))
    assert not verify_approval(r.request_hash(), flipped, XONLY)
    wrong_key = coincurve.PrivateKey((8).to_bytes(32, "big")).public_key_xonly.format()
    assert not verify_approval(r.request_hash(), a, wrong_key)


@pytest.mark.parametrize(("digest", "sig", "key"), [
    (b"\x00" * 32, b"\x00" * 64, b"\x00" * 32),  # not a point
    (b"\x00" * 32, b"\x00" * 64, b"\xff" * 32),  # above the field prime
    (b"\x00" * 31, b"\x00" * 64, XONLY),
    (b"\x00" * 32, b"\x00" * 63, XONLY),
    (b"\x00" * 32, b"\x00" * 64, b""),
    (b"\x00" * 32, None, XONLY),
])
def test_verify_never_raises(digest: bytes, sig: bytes, key: bytes) -> None:
    assert verify_approval(digest, Approval("a", sig), key) is False  # type: ignore[arg-type]


def test_with_approvals_validates() -> None:
    r = WithdrawalRequest.from_json(ETH)
    with pytest.raises(RequestError, match=r"approvals\[0\].signature"):
        r.with_approvals([Approval("ops-1", b"\x00" * 10)])
    with pytest.raises(RequestError, match="approvals: at most 32"):
        r.with_approvals([Approval("ops-1", b"\x00" * 64)] * 33)


# ---------------------------------------------------------------- result


def test_result_round_trip() -> None:
    signed = WithdrawalResult(
        request_id="w-1", status="signed", raw_tx="0x02f8", tx_hash="0x" + "ab" * 32,
        signature={"r": "11" * 32, "s": "22" * 32, "v": 1}, signatures=[{"r": "11" * 32, "s": "22" * 32, "v": 1}],
        attempts=1,
    )
    j = signed.to_json()
    assert list(j) == ["request_id", "status", "raw_tx", "tx_hash", "signature", "signatures", "reason", "rule",
                       "culprits", "attempts", "request_hash"]
    assert WithdrawalResult.from_json(j) == signed
    without = {k: v for k, v in j.items() if k != "request_hash"}  # results from before the field existed
    assert WithdrawalResult.from_json(without).request_hash is None
    assert WithdrawalResult.from_json(signed.encode()) == signed
    rejected = WithdrawalResult("w-2", "rejected", reason="destination x is not on the allowlist",
                                rule="destinations")
    assert WithdrawalResult.from_json(rejected.encode()) == rejected
    failed = WithdrawalResult("w-3", "failed", reason="party 2 cheated", culprits=[2], attempts=3)
    assert WithdrawalResult.from_json(failed.to_json()) == failed
    btc = WithdrawalResult("w-4", "signed", raw_tx="0200", tx_hash="cd" * 32,
                           signatures=[{"r": "11" * 32, "s": "22" * 32, "v": 0, "input": 0},
                                       {"r": "33" * 32, "s": "44" * 32, "v": 1, "input": 1}], attempts=1)
    assert WithdrawalResult.from_json(btc.encode()) == btc


@pytest.mark.parametrize(("change", "field"), [
    ({"status": "ok"}, "status:"),
    ({"extra": 1}, "extra: unknown field"),
    ({"attempts": True}, "attempts:"),
    ({"culprits": [-1]}, "culprits[0]:"),
    ({"culprits": "2"}, "culprits:"),
    ({"signature": {"r": "11" * 32, "s": "22" * 32}}, "signature.v: required"),
    ({"signature": {"r": "11", "s": "22" * 32, "v": 0}}, "signature.r:"),
    ({"signatures": [{"r": "11" * 32}]}, "signatures[0].s: required"),
    ({"raw_tx": 5}, "raw_tx:"),
    ({"request_id": "a.b"}, "request_id:"),
])
def test_result_validation(change: dict, field: str) -> None:
    j = WithdrawalResult("w-1", "failed").to_json()
    j.update(change)
    with pytest.raises(RequestError) as e:
        WithdrawalResult.from_json(j)
    assert str(e.value).startswith(field)
    j = WithdrawalResult("w-1", "failed").to_json()
    del j["attempts"]
    with pytest.raises(RequestError, match="attempts: required"):
        WithdrawalResult.from_json(j)
