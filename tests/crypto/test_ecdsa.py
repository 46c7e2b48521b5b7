"""ECDSA helpers: Wycheproof vectors, strict DER, low-S normalisation, recovery.

The Wycheproof files are read from tests/vectors (see tests/vectors/README.md).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
from coincurve import PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from engine.crypto.ecdsa import (
    HALF_Q,
    InvalidSignature,
    Signature,
    der_decode,
    der_encode,
    is_low_s,
    is_releasable,
    normalize,
    recover,
    recovery_id,
    verify_der,
    verify_digest,
)
from engine.crypto.group import G, P_FIELD, Q, InvalidPoint, Point, base_mul
from tests.helpers_openssl import openssl_verify

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "vectors"
PLAIN = "wycheproof_ecdsa_secp256k1_sha256_test.json"
BITCOIN = "wycheproof_ecdsa_secp256k1_sha256_bitcoin_test.json"

# Our documented choice for Wycheproof "acceptable" cases: reject them all.
# Those cases are BER-ish or otherwise non-canonical encodings of signatures
# (BerEncodedSignature, MissingZero, ...) and der_decode is strict DER.
ACCEPTABLE_EXPECTED = False


def _load(name: str) -> list:
    data = json.loads((VECTORS / name).read_text())
    cases = []
    for group in data["testGroups"]:
        pub = bytes.fromhex(group["publicKey"]["uncompressed"])
        for tc in group["tests"]:
            cases.append(
                pytest.param(
                    name,
                    pub,
                    bytes.fromhex(tc["msg"]),
                    bytes.fromhex(tc["sig"]),
                    tc["result"],
                    tuple(tc["flags"]),
                    id=f"{name}-tc{tc['tcId']}",
                )
            )
    return cases


WYCHEPROOF = _load(PLAIN) + _load(BITCOIN)


def _expected(name: str, result: str) -> bool:
    if result == "valid":
        return True
    if result == "invalid":
        return False
    assert result == "acceptable", result
    return ACCEPTABLE_EXPECTED


# Wycheproof ------------------------------------------------------------------


@pytest.mark.parametrize("name,pub,msg,sig,result,flags", WYCHEPROOF)
def test_wycheproof(name, pub, msg, sig, result, flags):
    digest = hashlib.sha256(msg).digest()
    got = verify_der(pub, digest, sig, require_low_s=(name == BITCOIN))
    assert got is _expected(name, result), (result, flags)
    # the compressed key and the Point form give the same answer
    point = Point.from_bytes(bytes([2 + (pub[-1] & 1)]) + pub[1:33])
    assert verify_der(point, digest, sig, require_low_s=(name == BITCOIN)) is got
    assert verify_der(point.to_bytes(), digest, sig, require_low_s=(name == BITCOIN)) is got


@pytest.mark.parametrize("name", [PLAIN, BITCOIN])
def test_wycheproof_files_complete(name):
    """Every declared case is parametrised; record that the pinned files have no "acceptable" cases."""
    data = json.loads((VECTORS / name).read_text())
    results = [tc["result"] for g in data["testGroups"] for tc in g["tests"]]
    assert len(results) == data["numberOfTests"]
    assert sum(1 for p in WYCHEPROOF if p.values[0] == name) == data["numberOfTests"]
    assert results.count("acceptable") == 0  # if a new file version has some, they are rejected (see above)


def test_wycheproof_agrees_with_openssl():
    """Without the low-S rule our verifier and OpenSSL agree on every vector of both files."""
    for p in WYCHEPROOF:
        _, pub, msg, sig, _, _ = p.values
        digest = hashlib.sha256(msg).digest()
        assert verify_der(pub, digest, sig) is openssl_verify(pub, digest, sig), p.id


# normalisation and recovery ----------------------------------------------------


def _digest(tag: bytes) -> bytes:
    return hashlib.sha256(tag).digest()


def test_normalize_high_s():
    sk = PrivateKey((0xC0FFEE).to_bytes(32, "big"))
    pub = sk.public_key.format(compressed=True)
    digest = _digest(b"normalise me")
    rec = sk.sign_recoverable(digest, hasher=None)  # libsecp256k1 signs low-S
    r, s, v = int.from_bytes(rec[:32], "big"), int.from_bytes(rec[32:64], "big"), rec[64]
    assert is_low_s(s)

    high = Signature(r, Q - s, v ^ 1)
    assert not is_low_s(high.s)
    low = normalize(high.r, high.s, high.v)
    assert low == Signature(r, s, v)
    assert low.s == Q - high.s and low.v == high.v ^ 1
    assert normalize(low.r, low.s, low.v) == low  # idempotent

    assert recover(digest, low) == Point.from_bytes(pub)
    assert recover(digest, high) == Point.from_bytes(pub)  # v matches the high s
    assert recover(digest, Signature(r, s, v ^ 1)) != Point.from_bytes(pub)

    for sig in (low, high):
        assert openssl_verify(pub, digest, sig.der())
        assert verify_digest(pub, digest, sig.r, sig.s)
    assert verify_digest(pub, digest, low.r, low.s, require_low_s=True)
    assert not verify_digest(pub, digest, high.r, high.s, require_low_s=True)
    assert not verify_der(pub, digest, high.der(), require_low_s=True)
    assert verify_der(pub, digest, high.der())


def test_recovery_id_matches_libsecp256k1(rng):
    """Sign with known nonces (scalar arithmetic only), derive v with recovery_id, recover the key."""
    x = 1 + rng.randbelow(Q - 1)
    X = base_mul(x)
    flipped_seen = set()
    for i in range(24):
        z = int.from_bytes(_digest(b"msg %d" % i), "big")
        k = 1 + rng.randbelow(Q - 1)
        R = base_mul(k)
        r = R.x() % Q
        s = pow(k, -1, Q) * (z + r * x) % Q
        flipped = s > HALF_Q
        flipped_seen.add(flipped)
        sig = normalize(r, s, recovery_id(R, False))
        assert sig.v == recovery_id(R, flipped)
        assert is_low_s(sig.s)
        digest = z.to_bytes(32, "big")
        assert recover(digest, sig) == X
        assert recover(digest, Signature(r, s, recovery_id(R, False))) == X
        assert verify_digest(X, digest, sig.r, sig.s, require_low_s=True)
        assert openssl_verify(X.to_bytes(), digest, sig.der())
    assert flipped_seen == {True, False}


def _point_with_x_at_least_q() -> Point:
    x = Q + 1  # x = q gives r = 0
    while True:
        try:
            return Point.from_bytes(b"\x02" + x.to_bytes(32, "big"))
        except InvalidPoint:
            x += 1


def test_recovery_id_bit_1_when_r_overflows():
    """R.x >= q sets bit 1; the key for such a signature is built with group ops, not hand EC math."""
    R = _point_with_x_at_least_q()
    assert Q <= R.x() < P_FIELD
    r = R.x() - Q
    s = 0x1234567890ABCDEF
    z = int.from_bytes(_digest(b"overflow"), "big")
    r_inv = pow(r, -1, Q)
    X = R * (s * r_inv) - G * (z * r_inv)  # the key (r, s) verifies under for z
    digest = z.to_bytes(32, "big")
    v = recovery_id(R, False)
    assert v == (2 | int(R.y_is_odd()))
    assert verify_digest(X, digest, r, s)
    assert recover(digest, Signature(r, s, v)) == X
    high = Signature(r, Q - s, recovery_id(R, True))
    assert high.v == v ^ 1
    assert recover(digest, high) == X
    assert normalize(high.r, high.s, high.v) == Signature(r, s, v)


def test_recovery_id_identity():
    with pytest.raises(InvalidPoint):
        recovery_id(Point.identity(), False)


def test_recover_rejects_junk():
    sig = Signature(1, 1, 0)
    with pytest.raises(InvalidSignature):
        recover(b"\x00" * 31, sig)
    with pytest.raises(InvalidSignature):
        recover(_digest(b"x"), (1, 1, 0))  # type: ignore[arg-type]
    off = _off_curve_x()  # no point has x = off, so v = 0, 1 cannot recover
    for v in (0, 1):
        with pytest.raises(InvalidSignature):
            recover(_digest(b"x"), Signature(off, 1, v))
    overflow_r = P_FIELD - Q  # r + q = p is not a field element, so v = 2, 3 cannot recover
    for v in (2, 3):
        with pytest.raises(InvalidSignature):
            recover(_digest(b"x"), Signature(overflow_r, 1, v))


def test_signature_container():
    sig = Signature(0xAB, Q - 1, 3)
    assert sig.compact() == (0xAB).to_bytes(32, "big") + (Q - 1).to_bytes(32, "big")
    assert sig.recoverable() == sig.compact() + b"\x03"
    assert der_decode(sig.der()) == (0xAB, Q - 1)
    for bad in [(0, 1, 0), (1, 0, 0), (Q, 1, 0), (1, Q, 0), (1, 1, 4), (1, 1, -1), (-1, 1, 0), (1.0, 1, 0)]:
        with pytest.raises(InvalidSignature):
            Signature(*bad)
    with pytest.raises(InvalidSignature):
        normalize(0, 1, 0)


def test_is_low_s():
    assert is_low_s(1) and is_low_s(HALF_Q)
    assert not is_low_s(HALF_Q + 1) and not is_low_s(Q - 1)
    assert not is_low_s(0) and not is_low_s(Q)


# DER -----------------------------------------------------------------------------


DER_VALUES = [1, 0x7F, 0x80, 0xFF, 0x100, 2**255 - 1, 2**255, HALF_Q, HALF_Q + 1, Q - 1]


@pytest.mark.parametrize("r", DER_VALUES)
@pytest.mark.parametrize("s", [1, 0x80, 2**255, Q - 1])
def test_der_round_trip(r, s):
    der = der_encode(r, s)
    assert der_decode(der) == (r, s)
    assert der == encode_dss_signature(r, s)  # same bytes as cryptography's DER encoder
    assert decode_dss_signature(der) == (r, s)


def test_der_matches_libsecp256k1():
    sk = PrivateKey((7).to_bytes(32, "big"))
    for i in range(16):
        der = sk.sign(_digest(b"%d" % i), hasher=None)
        assert der_encode(*der_decode(der)) == der


def test_der_encode_rejects():
    for bad in [(0, 1), (1, 0), (-1, 1), (True, 1), (1.5, 1), (2**1000, 1), (1, 2**1000)]:
        with pytest.raises(InvalidSignature):
            der_encode(*bad)


def _seq(body: bytes) -> bytes:
    return bytes([0x30, len(body)]) + body


_R1 = bytes.fromhex("02017f")  # INTEGER 127
_S1 = bytes.fromhex("020101")  # INTEGER 1
_GOOD = _seq(_R1 + _S1)
_HIGH = (0x80 << 248).to_bytes(32, "big")  # top bit set, needs a 0x00 pad

STRICT_REJECTS = {
    "leading zero padding": _seq(bytes.fromhex("0202007f") + _S1),
    "leading zero padding on s": _seq(_R1 + bytes.fromhex("02020001")),
    "double zero padding": _seq(b"\x02\x22\x00\x00" + _HIGH + _S1),
    "negative r": _seq(b"\x02\x20" + _HIGH + _S1),
    "negative s": _seq(_R1 + bytes.fromhex("020181")),
    "trailing garbage": _GOOD + b"\x00",
    "trailing garbage inside the sequence": _seq(_R1 + _S1 + b"\x00"),
    "sequence length too long": bytes([0x30, len(_GOOD) - 1]) + _GOOD[2:],
    "sequence length too short": bytes([0x30, len(_GOOD) - 3]) + _GOOD[2:],
    "r length too long": _seq(bytes.fromhex("02027f") + _S1),
    "s length past the end": _seq(_R1 + bytes.fromhex("020201")),
    "long-form sequence length": b"\x30\x81" + bytes([len(_GOOD) - 2]) + _GOOD[2:],
    "long-form integer length": _seq(bytes.fromhex("0281017f") + _S1),
    "indefinite length": b"\x30\x80" + _R1 + _S1 + b"\x00\x00",
    "zero-length r": _seq(b"\x02\x00" + _S1 + _S1),
    "r is zero": _seq(bytes.fromhex("020100") + _S1),
    "s is zero": _seq(_R1 + bytes.fromhex("020100")),
    "wrong sequence tag": b"\x31" + _GOOD[1:],
    "wrong integer tag": _seq(bytes.fromhex("03017f") + _S1),
    "missing s": _seq(bytes.fromhex("020401020304")),
    "truncated": _GOOD[:-1],
    "empty": b"",
    "three integers": _seq(_R1 + _S1 + _S1),
}


def test_strict_der_accepts_baseline():
    assert der_decode(_GOOD) == (127, 1)
    assert der_decode(_seq(b"\x02\x21\x00" + _HIGH + _S1)) == (int.from_bytes(_HIGH, "big"), 1)


@pytest.mark.parametrize("der", list(STRICT_REJECTS.values()), ids=list(STRICT_REJECTS))
def test_strict_der_rejects(der):
    with pytest.raises(InvalidSignature):
        der_decode(der)


@pytest.mark.parametrize("junk", [None, "3006020101020101", 1234, [0x30], memoryview(_GOOD)])
def test_der_decode_rejects_non_bytes(junk):
    with pytest.raises(InvalidSignature):
        der_decode(junk)


def test_verify_der_rejects_reencodings_of_a_valid_signature():
    sk = PrivateKey((99).to_bytes(32, "big"))
    pub = sk.public_key.format()
    digest = _digest(b"malleate")
    der = sk.sign(digest, hasher=None)
    r, s = der_decode(der)
    assert verify_der(pub, digest, der)
    padded = _seq(b"\x02" + bytes([der[3] + 1]) + b"\x00" + der[4 : 4 + der[3]] + der[4 + der[3] :])
    for bad in (der + b"\x00", padded, b"\x30\x81" + der[1:], der[:-1]):
        assert not verify_der(pub, digest, bad)


# verify_digest never raises ------------------------------------------------------


def _off_curve_x() -> int:
    x = 1
    while True:
        try:
            Point.from_bytes(b"\x02" + x.to_bytes(32, "big"))
        except InvalidPoint:
            return x
        x += 1


def test_verify_digest_never_raises_on_junk():
    sk = PrivateKey((12345).to_bytes(32, "big"))
    pub = sk.public_key.format()
    digest = _digest(b"junk")
    r, s = der_decode(sk.sign(digest, hasher=None))
    assert verify_digest(pub, digest, r, s)

    off = _off_curve_x()
    uncompressed = sk.public_key.format(compressed=False)
    bad_keys = [
        b"\x02" + off.to_bytes(32, "big"),  # x with no curve point
        b"\x03" + off.to_bytes(32, "big"),
        b"\x04" + uncompressed[1:33] + ((int.from_bytes(uncompressed[33:], "big") + 1) % P_FIELD).to_bytes(32, "big"),
        b"\x02" + P_FIELD.to_bytes(32, "big"),  # x >= p
        b"\x06" + uncompressed[1:],  # hybrid encoding
        b"\x07" + uncompressed[1:],
        b"\x05" + pub[1:],
        pub[:-1],
        pub + b"\x00",
        b"",
        b"\x00",
        Point.identity(),
        Point.identity().to_bytes(),
        None,
        pub.hex(),
        12345,
    ]
    for key in bad_keys:
        assert verify_digest(key, digest, r, s) is False, key

    for d in (b"", digest[:31], digest + b"\x00", None, digest.hex(), 5):
        assert verify_digest(pub, d, r, s) is False

    for rr, ss in [(0, s), (r, 0), (Q, s), (r, Q), (r + Q, s), (r, s + Q), (-r, s), (r, -s), (None, s), (r, 1.0),
                   (True, s), (r, b"\x01"), (2**300, s)]:
        assert verify_digest(pub, digest, rr, ss) is False

    assert verify_digest(pub, digest, r, Q - s) is True  # high-S accepted by default
    assert verify_digest(uncompressed, digest, r, s) is True
    assert verify_digest(bytearray(pub), bytearray(digest), r, s) is True
    assert verify_digest(pub, _digest(b"other"), r, s) is False


def test_verify_der_never_raises_on_junk():
    pub = base_mul(3).to_bytes()
    digest = _digest(b"x")
    for junk in (None, "", b"", b"\x30", b"\xff" * 80, 17, memoryview(b"\x30\x06\x02\x01\x01\x02\x01\x01")):
        assert verify_der(pub, digest, junk) is False
    assert verify_der(b"\x02" + b"\x00" * 32, digest, _GOOD) is False


def test_is_releasable_needs_verification_low_s_and_the_right_recovery_id(rng):
    x = 1 + rng.randbelow(Q - 1)
    X = base_mul(x)
    for i in range(8):
        digest = _digest(b"release %d" % i)
        z = int.from_bytes(digest, "big")
        k = 1 + rng.randbelow(Q - 1)
        R = base_mul(k)
        r = R.x() % Q
        s = pow(k, -1, Q) * (z + r * x) % Q
        sig = normalize(r, s, recovery_id(R, False))
        assert is_releasable(X.to_bytes(), digest, sig.r, sig.s, sig.v)
        assert is_releasable(X, digest, sig.r, sig.s, sig.v)
        assert not is_releasable(X, digest, sig.r, sig.s, sig.v ^ 1)  # wrong recovery id
        assert not is_releasable(X, digest, sig.r, Q - sig.s, sig.v ^ 1)  # high-S twin
        assert not is_releasable(base_mul(x + 1), digest, sig.r, sig.s, sig.v)  # another key
        assert not is_releasable(X, _digest(b"other"), sig.r, sig.s, sig.v)
        assert not is_releasable(b"\x02" + b"\x00" * 32, digest, sig.r, sig.s, sig.v)
