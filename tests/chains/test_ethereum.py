"""EIP-1559 transactions, checked against eth-account as an independent implementation."""

from __future__ import annotations

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_utils import to_checksum_address

from engine.chains import ethereum
from engine.crypto.ecdsa import normalize
from engine.crypto.group import Q

KEY = PrivateKey(bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"))
PUB = KEY.public_key.format(compressed=True)
TO = bytes.fromhex("d3cda913deb6f67967b99d67acdfa1712c293601")

TX = dict(
    chain_id=1,
    nonce=7,
    to=TO,
    value=10**18,
    gas=60_000,
    max_fee_per_gas=30 * 10**9,
    max_priority_fee_per_gas=2 * 10**9,
    data=bytes.fromhex("a9059cbb") + bytes(12) + TO + (5).to_bytes(32, "big"),
)


def sign(digest: bytes) -> tuple[int, int, int]:
    sig = KEY.sign_recoverable(digest, hasher=None)
    low = normalize(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64])
    return low.r, low.s, low.v


def eth_account_dict(tx: dict) -> dict:
    return {
        "type": 2,
        "chainId": tx["chain_id"],
        "nonce": tx["nonce"],
        "to": to_checksum_address(tx["to"]),  # eth-account refuses lower-case
        "value": tx["value"],
        "gas": tx["gas"],
        "maxFeePerGas": tx["max_fee_per_gas"],
        "maxPriorityFeePerGas": tx["max_priority_fee_per_gas"],
        "data": tx["data"],
        "accessList": [],
    }


def test_address_of_private_key_one() -> None:
    pub = PrivateKey((1).to_bytes(32, "big")).public_key.format(compressed=True)
    assert ethereum.address(pub) == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


def test_address_matches_eth_account() -> None:
    assert ethereum.address(PUB) == Account.from_key(KEY.secret).address


@pytest.mark.parametrize("tx", [TX, {**TX, "data": b"", "chain_id": 11155111, "nonce": 0, "value": 0}])
def test_signed_transaction_recovers_and_matches_eth_account(tx: dict) -> None:
    r, s, v = sign(ethereum.signing_hash(ethereum.Transaction(**tx)))
    raw = ethereum.signed_raw(ethereum.Transaction(**tx), r=r, s=s, v=v)
    assert raw[0] == 0x02
    assert Account.recover_transaction("0x" + raw.hex()) == ethereum.address(PUB)
    # RFC 6979 is deterministic, so an independent signer produces the very same bytes
    theirs = Account.sign_transaction(eth_account_dict(tx), KEY.secret)
    assert bytes(theirs.raw_transaction) == raw
    assert ethereum.tx_hash(raw) == "0x" + bytes(theirs.hash).hex()


def test_parse_address() -> None:
    checksummed = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
    raw = bytes.fromhex(checksummed[2:])
    assert ethereum.parse_address(checksummed) == raw
    assert ethereum.parse_address(checksummed.lower()) == raw
    assert ethereum.parse_address("0x" + checksummed[2:].upper()) == raw
    with pytest.raises(ValueError, match="checksum"):
        ethereum.parse_address("0x7e5F4552091A69125d5DfCb7b8C2659029395Bdf")
    for bad in ["7E5F4552091A69125d5DfCb7b8C2659029395Bdf", "0x7E5F", "0x" + "g" * 40, "0x" + "0" * 42]:
        with pytest.raises(ValueError, match="address"):
            ethereum.parse_address(bad)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"chain_id": 0}, "chain_id"),
        ({"nonce": -1}, "nonce"),
        ({"value": 2**256}, "value"),
        ({"gas": True}, "gas"),
        ({"max_fee_per_gas": 1.5}, "max_fee_per_gas"),
        ({"max_priority_fee_per_gas": 31 * 10**9}, "max_priority_fee_per_gas"),
        ({"to": b""}, "contract creation"),
        ({"to": TO[:19]}, "to"),
        ({"data": "0x"}, "data"),
    ],
)
def test_field_validation(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ethereum.signing_hash(ethereum.Transaction(**{**TX, **change}))


def test_signature_validation() -> None:
    r, s, v = sign(ethereum.signing_hash(ethereum.Transaction(**TX)))
    with pytest.raises(ValueError, match="v must"):
        ethereum.signed_raw(ethereum.Transaction(**TX), r=r, s=s, v=27)
    with pytest.raises(ValueError, match="s must be low"):
        ethereum.signed_raw(ethereum.Transaction(**TX), r=r, s=Q - s, v=v ^ 1)
    with pytest.raises(ValueError, match="r must"):
        ethereum.signed_raw(ethereum.Transaction(**TX), r=0, s=s, v=v)


def test_address_rejects_bad_keys() -> None:
    with pytest.raises(ValueError, match="pubkey"):
        ethereum.address(KEY.public_key.format(compressed=False))
    with pytest.raises(ValueError, match="pubkey"):
        ethereum.address(b"\x02" + bytes(32))  # x = 0 is not on the curve
