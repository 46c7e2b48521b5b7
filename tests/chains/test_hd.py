"""BIP-32 public derivation, checked against the BIP's own test vectors."""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
from bitcoin.base58 import decode as b58decode
from coincurve import PrivateKey, PublicKey

from engine.chains import hd
from engine.crypto.group import Q

VECTORS = json.loads((pathlib.Path(__file__).parents[1] / "vectors" / "bip32_test_vectors.json").read_text())


def b58check(text: str) -> bytes:
    raw = b58decode(text)
    payload, check = raw[:-4], raw[-4:]
    assert hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] == check
    assert len(payload) == 78
    return payload


def xpub(text: str) -> tuple[bytes, bytes]:
    """(chain code, compressed public key) of an xpub: 4 version, 1 depth, 4 fingerprint,
    4 child number, 32 chain code, 33 key."""
    payload = b58check(text)
    return payload[13:45], payload[45:78]


def xprv_secret(text: str) -> int:
    payload = b58check(text)
    assert payload[45] == 0
    return int.from_bytes(payload[46:78], "big")


def non_hardened_steps() -> list[tuple[str, dict, dict]]:
    """Every (parent, child) pair of consecutive chain entries where the child index is non-hardened."""
    steps = []
    for vector in VECTORS["vectors"]:
        chains = vector["chains"]
        for parent, child in zip(chains, chains[1:]):
            last = child["path"].rsplit("/", 1)[1]
            if not last.endswith("'"):
                steps.append((f"v{vector['vector']}:{child['path']}", parent, child))
    return steps


STEPS = non_hardened_steps()


def test_vectors_have_non_hardened_steps() -> None:
    assert len(STEPS) == 6


@pytest.mark.parametrize(("label", "parent", "child"), STEPS, ids=[s[0] for s in STEPS])
def test_ckdpub_matches_bip32_vectors(label: str, parent: dict, child: dict) -> None:
    code, key = xpub(parent["xpub"])
    index = int(child["path"].rsplit("/", 1)[1])
    derived, tweak = hd.derive(key, code, [index])
    assert derived == xpub(child["xpub"])[1]
    tweak_point = PrivateKey(tweak.to_bytes(32, "big")).public_key
    assert PublicKey.combine_keys([PublicKey(key), tweak_point]).format() == derived
    assert (xprv_secret(parent["xprv"]) + tweak) % Q == xprv_secret(child["xprv"])
    assert hd.derive(key, code, f"m/{index}") == (derived, tweak)


def test_two_steps_accumulate_the_tweak() -> None:
    chains = VECTORS["vectors"][0]["chains"]
    by_path = {c["path"]: c for c in chains}
    parent, grandchild = by_path["m/0'/1/2'"], by_path["m/0'/1/2'/2/1000000000"]
    code, key = xpub(parent["xpub"])
    derived, tweak = hd.derive(key, code, "m/2/1000000000")
    assert derived == xpub(grandchild["xpub"])[1]
    assert (xprv_secret(parent["xprv"]) + tweak) % Q == xprv_secret(grandchild["xprv"])


def test_root_path_is_identity() -> None:
    key = PrivateKey((5).to_bytes(32, "big")).public_key.format()
    assert hd.derive(key, bytes(32), "m") == (key, 0)
    assert hd.derive(key, bytes(32), []) == (key, 0)
    assert hd.derive_for(key, None) == (key, 0)


def test_derive_for_uses_the_public_chain_code() -> None:
    key = PrivateKey((5).to_bytes(32, "big")).public_key.format()
    code = hashlib.sha256(b"conclave/bip32-chain-code/v1" + key).digest()
    assert hd.chain_code(key) == code
    child, tweak = hd.derive_for(key, "m/0/7")
    assert (child, tweak) == hd.derive(key, code, (0, 7))
    assert PrivateKey(((5 + tweak) % Q).to_bytes(32, "big")).public_key.format() == child


def test_parse_path() -> None:
    assert hd.parse_path("m") == ()
    assert hd.parse_path("m/0/7") == (0, 7)
    assert hd.parse_path("m/2147483647") == (2**31 - 1,)
    assert len(hd.parse_path("m" + "/1" * 255)) == 255


@pytest.mark.parametrize("path", ["m/0'", "m/0h/1", "m/1/0H", "m/2147483648", "m/0/2147483647'"])
def test_hardened_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="hardened"):
        hd.parse_path(path)
    key = PrivateKey((5).to_bytes(32, "big")).public_key.format()
    with pytest.raises(ValueError, match="hardened"):
        hd.derive_for(key, path)


@pytest.mark.parametrize(
    "path", ["", "M/0", "0/1", "m/", "m//1", "m/-1", "m/+1", "m/01", "m/1.5", "m/ 1", "m/x", "m/0/", "/m"]
)
def test_garbage_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        hd.parse_path(path)


def test_depth_limit_and_bad_arguments() -> None:
    key = PrivateKey((5).to_bytes(32, "big")).public_key.format()
    with pytest.raises(ValueError, match="deeper"):
        hd.parse_path("m" + "/1" * 256)
    with pytest.raises(ValueError, match="hardened"):
        hd.derive(key, bytes(32), [2**31])
    with pytest.raises(ValueError, match="index"):
        hd.derive(key, bytes(32), [True])
    with pytest.raises(ValueError, match="code"):
        hd.derive(key, bytes(31), "m/0")
    with pytest.raises(ValueError, match="pubkey"):
        hd.derive(key[1:], bytes(32), "m/0")
    with pytest.raises(ValueError, match="path"):
        hd.derive(key, bytes(32), b"m/0")  # type: ignore[arg-type]
