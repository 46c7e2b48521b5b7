"""P2WPKH spending, checked against python-bitcoinlib as an independent implementation."""

from __future__ import annotations

import dataclasses

import pytest
from bitcoin.core import CTransaction, b2lx
from bitcoin.core.script import SIGHASH_ALL, SIGVERSION_WITNESS_V0, CScript, SignatureHash
from coincurve import PrivateKey

from engine.chains import bitcoin as btc
from engine.crypto.ecdsa import der_encode, normalize
from engine.crypto.group import Q

KEY = PrivateKey(bytes.fromhex("619c335025c7f4012e556c2a58b2506e30b8511b53ade95ea316fd8c3286feb9"))
PUB = KEY.public_key.format(compressed=True)
OTHER = PrivateKey((7).to_bytes(32, "big")).public_key.format(compressed=True)

INPUTS = [
    btc.TxIn(txid="ef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a", vout=1,
             amount=600_000_000, sequence=0xFFFFFFFF),
    btc.TxIn(txid="fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f", vout=0,
             amount=25_000, sequence=0xFFFFFFFD),
]
P2WSH = "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3"  # BIP-173 example
OUTPUTS = [btc.TxOut(address=btc.address(OTHER, "mainnet"), amount=500_000_000),
           btc.TxOut(address=P2WSH, amount=99_990_000)]
TX = dict(version=2, locktime=0x11, inputs=INPUTS, outputs=OUTPUTS, pubkey=PUB, network="mainnet")


def sign(digest: bytes) -> tuple[int, int]:
    sig = KEY.sign_recoverable(digest, hasher=None)
    low = normalize(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64])
    return low.r, low.s


def script_code(pubkey: bytes) -> CScript:
    return CScript(bytes.fromhex("76a914") + btc.hash160(pubkey) + bytes.fromhex("88ac"))


def test_sighashes_and_serialisation_match_python_bitcoinlib() -> None:
    digests = btc.sighashes(btc.Spend(**TX))
    raw = btc.signed_raw(btc.Spend(**TX), [sign(d) for d in digests])
    tx = CTransaction.deserialize(raw)  # also proves our serialisation parses
    assert tx.serialize() == raw
    assert tx.nVersion == 2 and tx.nLockTime == 0x11
    assert [b2lx(i.prevout.hash) for i in tx.vin] == [i.txid for i in INPUTS]
    assert [i.prevout.n for i in tx.vin] == [1, 0]
    assert [i.nSequence for i in tx.vin] == [0xFFFFFFFF, 0xFFFFFFFD]
    assert [o.nValue for o in tx.vout] == [500_000_000, 99_990_000]
    assert bytes(tx.vout[1].scriptPubKey) == btc.script_pubkey(P2WSH, "mainnet")
    for i, txin in enumerate(INPUTS):
        theirs = SignatureHash(script_code(PUB), tx, i, SIGHASH_ALL, amount=txin.amount,
                               sigversion=SIGVERSION_WITNESS_V0)
        assert digests[i] == theirs
        sig_item, key_item = tx.wit.vtxinwit[i].scriptWitness.stack
        assert sig_item == der_encode(*sign(digests[i])) + b"\x01"
        assert key_item == PUB
        assert KEY.public_key.verify(sig_item[:-1], theirs, hasher=None)
    assert btc.txid(raw) == b2lx(tx.GetTxid())
    assert btc.txid(tx.serialize(params={"include_witness": False})) == b2lx(tx.GetTxid())


def test_sighash_commits_to_amount() -> None:
    more = dataclasses.replace(INPUTS[1], amount=INPUTS[1].amount + 1)
    changed = btc.Spend(**{**TX, "inputs": [INPUTS[0], more]})
    assert btc.sighashes(changed)[1] != btc.sighashes(btc.Spend(**TX))[1]


def test_addresses() -> None:
    one = PrivateKey((1).to_bytes(32, "big")).public_key.format(compressed=True)
    assert btc.address(one, "mainnet") == "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    assert btc.hash160(one).hex() == "751e76e8199196d454941c45d1b3a323f1433bd6"
    assert btc.address(one, "testnet") == "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"  # BIP-173
    assert btc.address(one, "regtest").startswith("bcrt1q")
    assert btc.script_pubkey(btc.address(one, "regtest"), "regtest") == b"\x00\x14" + btc.hash160(one)
    assert btc.script_pubkey("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "mainnet")[2:] == btc.hash160(one)
    with pytest.raises(ValueError, match="network"):
        btc.address(one, "litecoin")


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "testnet"),  # wrong network
        ("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "regtest"),
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "mainnet"),  # bad checksum
        ("1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH", "mainnet"),  # legacy P2PKH
        ("garbage", "mainnet"),
        ("", "mainnet"),
        # BIP-350 Taproot (bech32m) and a v1 address with the old checksum
        ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", "mainnet"),
        ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx", "mainnet"),
    ],
)
def test_script_pubkey_rejects(address: str, network: str) -> None:
    with pytest.raises(ValueError, match="address"):
        btc.script_pubkey(address, network)


def test_v1_with_bech32_checksum_is_unsupported() -> None:
    v1 = "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx"
    with pytest.raises(ValueError, match="unsupported address"):
        btc.script_pubkey(v1, "mainnet")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"inputs": []}, "inputs"),
        ({"outputs": []}, "outputs"),
        ({"outputs": [btc.TxOut(OUTPUTS[0].address, 600_025_001)]}, "exceeds inputs total"),
        ({"outputs": [btc.TxOut(OUTPUTS[0].address, 0)]}, r"outputs\[0\].amount"),
        ({"inputs": [dataclasses.replace(INPUTS[0], amount=btc.MAX_MONEY + 1)]}, r"inputs\[0\].amount"),
        ({"inputs": [dataclasses.replace(INPUTS[0], vout=2**32)]}, r"inputs\[0\].vout"),
        ({"inputs": [dataclasses.replace(INPUTS[0], sequence=-1)]}, r"inputs\[0\].sequence"),
        ({"inputs": [dataclasses.replace(INPUTS[0], txid="zz" * 32)]}, r"inputs\[0\].txid"),
        ({"inputs": [INPUTS[0], dataclasses.replace(INPUTS[0], amount=1)]}, "same outpoint"),
        ({"version": 2**32}, "version"),
        ({"locktime": -1}, "locktime"),
        ({"network": "testnet"}, "address"),
        ({"pubkey": PUB[1:]}, "pubkey"),
    ],
)
def test_validation(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        btc.sighashes(btc.Spend(**{**TX, **change}))


def test_signed_raw_rejects_bad_signatures() -> None:
    sigs = [sign(d) for d in btc.sighashes(btc.Spend(**TX))]
    with pytest.raises(ValueError, match="2 inputs"):
        btc.signed_raw(btc.Spend(**TX), sigs[:1])
    with pytest.raises(ValueError, match=r"signatures\[1\].s must be low"):
        btc.signed_raw(btc.Spend(**TX), [sigs[0], (sigs[1][0], Q - sigs[1][1])])
    with pytest.raises(ValueError, match=r"signatures\[0\] does not verify"):
        btc.signed_raw(btc.Spend(**TX), [sigs[1], sigs[0]])


def test_txid_rejects_truncated() -> None:
    raw = btc.signed_raw(btc.Spend(**TX), [sign(d) for d in btc.sighashes(btc.Spend(**TX))])
    with pytest.raises(ValueError, match="raw"):
        btc.txid(raw[:-1])
    with pytest.raises(ValueError, match="raw"):
        btc.txid(raw + b"\x00")
