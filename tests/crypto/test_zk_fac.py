"""Πfac (no-small-factor proof): completeness, soundness checks, BitForge attack."""

from __future__ import annotations

import dataclasses
import time

import gmpy2
import pytest

from engine.crypto import ring_pedersen
from engine.crypto.paillier import PaillierSecretKey
from engine.crypto.primes import generate_blum_prime
from engine.crypto.ring_pedersen import RingPedersenParams
from engine.crypto.security import LEVELS
from engine.crypto.transcript import proof_context
from engine.crypto.zk import fac, mod
from engine.crypto.zk.common import ProofError
from schemas.codec import packb, unpackb
from tests.conftest import SeededRng, paillier_keys

DEV = LEVELS["dev-2048"]
CTX = proof_context(b"exec-fac-1", 3, b"rho")
OTHER_CTX = proof_context(b"exec-fac-2", 3, b"rho")


@pytest.fixture(scope="module")
def setup(dev_keys):
    prover_sk = dev_keys[3]
    verifier_sk = dev_keys[4]
    aux, _ = ring_pedersen.generate(verifier_sk, SeededRng(31))
    proof = fac.prove(CTX, DEV, aux, prover_sk, SeededRng(32))
    return prover_sk, verifier_sk, aux, proof


def test_honest_proof_verifies(setup, dev_keys):
    prover_sk, verifier_sk, aux, proof = setup
    assert fac.verify(CTX, DEV, aux, prover_sk.n, proof) is None
    assert fac.verify(CTX, DEV, aux, prover_sk.n, proof, aux_sk=verifier_sk) is None
    # a key for another modulus is ignored, not misused
    assert fac.verify(CTX, DEV, aux, prover_sk.n, proof, aux_sk=dev_keys[5]) is None


def test_prover_is_deterministic_given_rng(setup):
    prover_sk, _, aux, proof = setup
    assert fac.prove(CTX, DEV, aux, prover_sk, SeededRng(32)) == proof


FIELDS = ["P", "Q", "A", "B", "T", "sigma", "z1", "z2", "w1", "w2", "v"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("accel", [False, True], ids=["plain", "crt"])
def test_tampering_each_field_is_rejected(setup, field, accel):
    prover_sk, verifier_sk, aux, proof = setup
    value = getattr(proof, field)
    if field in ("P", "Q", "A", "B", "T"):
        new = value * aux.t % aux.n
    else:
        new = value + 1
    bad = dataclasses.replace(proof, **{field: new})
    with pytest.raises(ProofError):
        fac.verify(CTX, DEV, aux, prover_sk.n, bad, aux_sk=verifier_sk if accel else None)


def test_other_context_is_rejected(setup):
    prover_sk, _, aux, proof = setup
    with pytest.raises(ProofError):
        fac.verify(OTHER_CTX, DEV, aux, prover_sk.n, proof)


def test_other_statement_is_rejected(setup, dev_keys):
    prover_sk, verifier_sk, aux, proof = setup
    with pytest.raises(ProofError):
        fac.verify(CTX, DEV, aux, dev_keys[5].n, proof)
    other_aux, _ = ring_pedersen.generate(dev_keys[5], SeededRng(33))
    for stmt in (RingPedersenParams(aux.n, aux.t, aux.s), other_aux):
        with pytest.raises(ProofError):
            fac.verify(CTX, DEV, stmt, prover_sk.n, proof)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("kind", ["bool", "str", "none", "float"])
def test_non_integer_values_are_rejected(setup, field, kind):
    prover_sk, _, aux, proof = setup
    value = {"bool": True, "str": "1", "none": None, "float": 1.0}[kind]
    with pytest.raises(ProofError):
        fac.verify(CTX, DEV, aux, prover_sk.n, dataclasses.replace(proof, **{field: value}))


@pytest.mark.parametrize("field", ["P", "Q", "A", "B", "T"])
@pytest.mark.parametrize("kind", ["zero", "modulus", "negative", "above"])
def test_group_elements_outside_units_are_rejected(setup, field, kind):
    prover_sk, _, aux, proof = setup
    v = getattr(proof, field)
    value = {"zero": 0, "modulus": aux.n, "negative": -v, "above": v + aux.n}[kind]
    with pytest.raises(ProofError, match=f"{field} is not in"):
        fac.verify(CTX, DEV, aux, prover_sk.n, dataclasses.replace(proof, **{field: value}))


@pytest.mark.parametrize("field", ["z1", "z2"])
def test_z_out_of_range_is_rejected(setup, field):
    prover_sk, _, aux, proof = setup
    bound = (1 << (DEV.ell + DEV.epsilon)) * int(gmpy2.isqrt(prover_sk.n))
    for value in (bound + 1, -bound - 1):
        with pytest.raises(ProofError, match=f"{field} out of range"):
            fac.verify(CTX, DEV, aux, prover_sk.n, dataclasses.replace(proof, **{field: value}))


@pytest.mark.parametrize("field", ["sigma", "w1", "w2", "v"])
def test_oversized_exponents_are_rejected(setup, field):
    prover_sk, _, aux, proof = setup
    huge = 1 << 20000
    with pytest.raises(ProofError, match="out of range"):
        fac.verify(CTX, DEV, aux, prover_sk.n, dataclasses.replace(proof, **{field: huge}))


@pytest.mark.parametrize(
    "make_aux, n",
    [
        (lambda a: a, 0),
        (lambda a: a, True),
        (lambda a: a, "N"),
        (lambda a: a, -5),
        (lambda a: RingPedersenParams(0, a.s, a.t), None),
        (lambda a: RingPedersenParams(a.n, 0, a.t), None),
        (lambda a: RingPedersenParams(a.n, a.s, a.n), None),
        (lambda a: RingPedersenParams(a.n, a.s, True), None),
        (lambda a: (a.n, a.s, a.t), None),
    ],
)
def test_malformed_statement_is_rejected(setup, make_aux, n):
    prover_sk, _, aux, proof = setup
    with pytest.raises(ProofError):
        fac.verify(CTX, DEV, make_aux(aux), prover_sk.n if n is None else n, proof)


def test_not_a_proof_is_rejected(setup):
    prover_sk, _, aux, proof = setup
    with pytest.raises(ProofError):
        fac.verify(CTX, DEV, aux, prover_sk.n, dataclasses.astuple(proof))


def test_codec_round_trip(setup):
    _, _, _, proof = setup
    decoded = unpackb(packb(proof))
    assert decoded == proof and isinstance(decoded, fac.FacProof)


# --- BitForge: a Blum modulus with a small factor -------------------------------


@pytest.fixture(scope="module")
def small_factor_key():
    gen = SeededRng(41)
    small = generate_blum_prime(128, randbits=gen.randbits)
    big = generate_blum_prime(1920, randbits=gen.randbits)
    sk = PaillierSecretKey(small, big)
    assert sk.n.bit_length() >= 2047
    return sk


def test_bitforge_modulus_passes_mod(small_factor_key):
    """Πmod alone accepts the small-factor modulus: it is a genuine Blum integer."""
    proof = mod.prove(CTX, DEV, small_factor_key, SeededRng(42))
    assert mod.verify(CTX, DEV, small_factor_key.n, proof) is None


@pytest.mark.parametrize("small_first", [True, False])
def test_bitforge_modulus_fails_fac(setup, small_factor_key, small_first):
    _, verifier_sk, aux, _ = setup
    sk = small_factor_key
    if not small_first:
        sk = PaillierSecretKey(sk.q, sk.p)
    proof = fac.prove(CTX, DEV, aux, sk, SeededRng(43))
    # the big factor's response leaves ±2^(ℓ+ε)·√N: z2 when q is big, z1 when p is
    expected = "z2 out of range" if small_first else "z1 out of range"
    with pytest.raises(ProofError, match=expected):
        fac.verify(CTX, DEV, aux, sk.n, proof)
    with pytest.raises(ProofError, match=expected):
        fac.verify(CTX, DEV, aux, sk.n, proof, aux_sk=verifier_sk)


def test_bitforge_small_factor_cannot_hide_by_clamping(setup, small_factor_key):
    """Bringing the out-of-range response back into range breaks the algebraic check."""
    _, _, aux, _ = setup
    sk = small_factor_key
    proof = fac.prove(CTX, DEV, aux, sk, SeededRng(44))
    bound = (1 << (DEV.ell + DEV.epsilon)) * int(gmpy2.isqrt(sk.n))
    clamped = dataclasses.replace(proof, z2=proof.z2 % bound)
    with pytest.raises(ProofError, match="s\\^z2"):
        fac.verify(CTX, DEV, aux, sk.n, clamped)


@pytest.mark.slow
def test_honest_run_at_cggmp21_128():
    level = LEVELS["cggmp21-128"]
    prover_sk, verifier_sk = paillier_keys("cggmp21-128", 2)
    aux, _ = ring_pedersen.generate(verifier_sk, SeededRng(6))
    t0 = time.perf_counter()
    proof = fac.prove(CTX, level, aux, prover_sk, SeededRng(7))
    t1 = time.perf_counter()
    fac.verify(CTX, level, aux, prover_sk.n, proof)
    t2 = time.perf_counter()
    fac.verify(CTX, level, aux, prover_sk.n, proof, aux_sk=verifier_sk)
    t3 = time.perf_counter()
    print(
        f"\nΠfac cggmp21-128: prove {t1 - t0:.3f}s verify {t2 - t1:.3f}s verify(CRT) {t3 - t2:.3f}s"
    )
