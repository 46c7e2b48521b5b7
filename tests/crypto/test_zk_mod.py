"""Πmod (Paillier-Blum modulus proof): completeness, soundness checks, attacks."""

from __future__ import annotations

import dataclasses
import time

import gmpy2
import pytest

from engine.crypto.paillier import PaillierSecretKey
from engine.crypto.primes import generate_blum_prime
from engine.crypto.security import LEVELS
from engine.crypto.transcript import proof_context
from engine.crypto.zk import mod
from engine.crypto.zk.common import ProofError
from schemas.codec import packb, unpackb
from tests.conftest import SeededRng, load_safe_primes, paillier_keys

DEV = LEVELS["dev-2048"]
CTX = proof_context(b"exec-mod-1", 1, b"rho")
OTHER_CTX = proof_context(b"exec-mod-2", 1, b"rho")


@pytest.fixture(scope="module")
def honest(dev_keys):
    sk = dev_keys[0]
    return sk, mod.prove(CTX, DEV, sk, SeededRng(11))


def _replace_at(t: tuple, i: int, value) -> tuple:
    return t[:i] + (value,) + t[i + 1 :]


def test_honest_proof_verifies(honest):
    sk, proof = honest
    assert mod.verify(CTX, DEV, sk.n, proof) is None
    assert len(proof.x) == len(proof.a) == len(proof.b) == len(proof.z) == DEV.m
    assert gmpy2.jacobi(proof.w, sk.n) == -1


def test_prover_is_deterministic_given_rng(dev_keys):
    sk = dev_keys[0]
    assert mod.prove(CTX, DEV, sk, SeededRng(5)) == mod.prove(CTX, DEV, sk, SeededRng(5))


def test_x_is_principal_fourth_root(honest):
    sk, proof = honest
    for x in proof.x[:8]:
        assert gmpy2.jacobi(x, sk.p) == 1 and gmpy2.jacobi(x, sk.q) == 1


def _tamper_cases(n):
    def flip(v):
        return 1 - v

    return {
        "x_i": lambda p: dataclasses.replace(p, x=_replace_at(p.x, 7, p.x[7] * 2 % n)),
        "z_i": lambda p: dataclasses.replace(p, z=_replace_at(p.z, 100, p.z[100] * 3 % n)),
        "w": lambda p: dataclasses.replace(p, w=p.w * 4 % n),  # still Jacobi -1
        "a_i": lambda p: dataclasses.replace(p, a=_replace_at(p.a, 50, flip(p.a[50]))),
        "b_i": lambda p: dataclasses.replace(p, b=_replace_at(p.b, 51, flip(p.b[51]))),
        "swap_x": lambda p: dataclasses.replace(p, x=(p.x[1], p.x[0]) + p.x[2:]),
    }


@pytest.mark.parametrize("case", ["x_i", "z_i", "w", "a_i", "b_i", "swap_x"])
def test_tampering_is_rejected(honest, case):
    sk, proof = honest
    bad = _tamper_cases(sk.n)[case](proof)
    assert bad != proof
    with pytest.raises(ProofError):
        mod.verify(CTX, DEV, sk.n, bad)


def test_other_context_is_rejected(honest):
    sk, proof = honest
    with pytest.raises(ProofError):
        mod.verify(OTHER_CTX, DEV, sk.n, proof)


def test_other_modulus_is_rejected(honest, dev_keys):
    _, proof = honest
    with pytest.raises(ProofError):
        mod.verify(CTX, DEV, dev_keys[1].n, proof)


@pytest.mark.parametrize(
    "field, make",
    [
        ("w", lambda p, n: True),
        ("w", lambda p, n: "w"),
        ("w", lambda p, n: 0),
        ("w", lambda p, n: n),
        ("w", lambda p, n: -p.w),
        ("w", lambda p, n: 4),  # a unit with Jacobi symbol +1
        ("w", lambda p, n: None),
        ("x", lambda p, n: p.x[:-1]),
        ("x", lambda p, n: p.x + (p.x[0],)),
        ("x", lambda p, n: _replace_at(p.x, 0, True)),
        ("x", lambda p, n: _replace_at(p.x, 0, "1")),
        ("x", lambda p, n: _replace_at(p.x, 0, 0)),
        ("x", lambda p, n: _replace_at(p.x, 0, n)),
        ("x", lambda p, n: _replace_at(p.x, 0, p.x[0] + n)),
        ("x", lambda p, n: None),
        ("z", lambda p, n: ()),
        ("z", lambda p, n: _replace_at(p.z, 5, n)),
        ("z", lambda p, n: _replace_at(p.z, 5, 0)),
        ("z", lambda p, n: _replace_at(p.z, 5, -p.z[5])),
        ("z", lambda p, n: _replace_at(p.z, 5, 1.0)),
        ("a", lambda p, n: _replace_at(p.a, 0, 2)),
        ("a", lambda p, n: _replace_at(p.a, 0, -1)),
        ("a", lambda p, n: _replace_at(p.a, 0, bool(p.a[0]))),
        ("a", lambda p, n: p.a[:10]),
        ("b", lambda p, n: _replace_at(p.b, 0, "0")),
        ("b", lambda p, n: _replace_at(p.b, 0, None)),
        ("b", lambda p, n: p.b + (0,)),
    ],
)
def test_malformed_proof_values_are_rejected(honest, field, make):
    sk, proof = honest
    bad = dataclasses.replace(proof, **{field: make(proof, sk.n)})
    with pytest.raises(ProofError):
        mod.verify(CTX, DEV, sk.n, bad)


@pytest.mark.parametrize("n", [True, "N", None, 0, 1, -15, 2.0])
def test_malformed_modulus_is_rejected(honest, n):
    _, proof = honest
    with pytest.raises(ProofError):
        mod.verify(CTX, DEV, n, proof)


def test_not_a_proof_is_rejected(honest):
    sk, proof = honest
    with pytest.raises(ProofError):
        mod.verify(CTX, DEV, sk.n, dataclasses.astuple(proof))


def test_prime_modulus_is_rejected(honest):
    sk, proof = honest
    with pytest.raises(ProofError, match="prime"):
        mod.verify(CTX, DEV, sk.p, proof)


def test_even_modulus_is_rejected(honest):
    sk, proof = honest
    with pytest.raises(ProofError, match="odd"):
        mod.verify(CTX, DEV, 2 * sk.n, proof)
    with pytest.raises(ProofError, match="odd"):
        mod.verify(CTX, DEV, sk.n + 1, proof)


def test_codec_round_trip(honest):
    _, proof = honest
    decoded = unpackb(packb(proof))
    assert decoded == proof
    assert isinstance(decoded, mod.ModProof)


def test_non_blum_modulus_fails(dev_keys):
    """p ≡ 1 (mod 4): the prover must not crash, and its proof must not verify."""
    gen = SeededRng(77)
    p = generate_blum_prime(1024, residue=1, randbits=gen.randbits)
    q = load_safe_primes(1024)[0]
    assert p % 4 == 1 and q % 4 == 3
    sk = PaillierSecretKey(p, q)
    start = time.perf_counter()
    proof = mod.prove(CTX, DEV, sk, SeededRng(78))
    assert time.perf_counter() - start < 5
    with pytest.raises(ProofError):
        mod.verify(CTX, DEV, sk.n, proof)


def test_both_factors_non_blum_fails():
    gen = SeededRng(79)
    p = generate_blum_prime(1024, residue=1, randbits=gen.randbits)
    q = generate_blum_prime(1024, residue=1, randbits=gen.randbits)
    sk = PaillierSecretKey(p, q)
    proof = mod.prove(CTX, DEV, sk, SeededRng(80))
    with pytest.raises(ProofError):
        mod.verify(CTX, DEV, sk.n, proof)


def test_prover_refuses_when_gcd_n_phi_is_not_one():
    # q - 1 = 42 is divisible by p = 7, so gcd(N, φ(N)) = 7
    with pytest.raises(ValueError):
        mod.prove(CTX, DEV, PaillierSecretKey(7, 43), SeededRng(1))


@pytest.mark.slow
def test_honest_run_at_cggmp21_128():
    level = LEVELS["cggmp21-128"]
    sk = paillier_keys("cggmp21-128", 2)[0]
    t0 = time.perf_counter()
    proof = mod.prove(CTX, level, sk, SeededRng(3))
    t1 = time.perf_counter()
    mod.verify(CTX, level, sk.n, proof)
    t2 = time.perf_counter()
    print(f"\nΠmod cggmp21-128: prove {t1 - t0:.3f}s verify {t2 - t1:.3f}s")
