"""Πprm (ring-Pedersen parameter proof): completeness, soundness checks, attacks."""

from __future__ import annotations

import dataclasses
import time

import gmpy2
import pytest

from engine.crypto import ring_pedersen
from engine.crypto.ring_pedersen import RingPedersenParams, RingPedersenSecret
from engine.crypto.security import LEVELS
from engine.crypto.transcript import proof_context
from engine.crypto.zk import prm
from engine.crypto.zk.common import ProofError
from schemas.codec import packb, unpackb
from tests.conftest import SeededRng, paillier_keys

DEV = LEVELS["dev-2048"]
CTX = proof_context(b"exec-prm-1", 2, b"rho")
OTHER_CTX = proof_context(b"exec-prm-2", 2, b"rho")


@pytest.fixture(scope="module")
def setup(dev_keys):
    sk = dev_keys[2]
    params, secret = ring_pedersen.generate(sk, SeededRng(21))
    proof = prm.prove(CTX, DEV, params, secret, SeededRng(22), sk=sk)
    return sk, params, secret, proof


def _replace_at(t: tuple, i: int, value) -> tuple:
    return t[:i] + (value,) + t[i + 1 :]


def test_honest_proof_verifies(setup):
    _, params, _, proof = setup
    assert prm.verify(CTX, DEV, params, proof) is None
    assert len(proof.A) == len(proof.z) == DEV.m


def test_crt_and_plain_provers_agree(setup, dev_keys):
    sk, params, secret, proof = setup
    assert prm.prove(CTX, DEV, params, secret, SeededRng(22)) == proof
    # a key for a different modulus is not used as an accelerator
    other = dev_keys[1]
    assert prm.prove(CTX, DEV, params, secret, SeededRng(22), sk=other) == proof


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p, prm_: dataclasses.replace(p, A=_replace_at(p.A, 9, p.A[9] * prm_.t % prm_.n)),
        lambda p, prm_: dataclasses.replace(p, A=_replace_at(p.A, 127, p.A[127] * prm_.s % prm_.n)),
        lambda p, prm_: dataclasses.replace(p, z=_replace_at(p.z, 9, p.z[9] + 1)),
        lambda p, prm_: dataclasses.replace(p, z=_replace_at(p.z, 0, p.z[0] - 1)),
        lambda p, prm_: dataclasses.replace(p, A=(p.A[1], p.A[0]) + p.A[2:], z=(p.z[1], p.z[0]) + p.z[2:]),
    ],
    ids=["A_i*t", "A_i*s", "z_i+1", "z_0-1", "swap_pairs"],
)
def test_tampering_is_rejected(setup, tamper):
    _, params, _, proof = setup
    bad = tamper(proof, params)
    assert bad != proof
    with pytest.raises(ProofError):
        prm.verify(CTX, DEV, params, bad)


def test_other_context_is_rejected(setup):
    _, params, _, proof = setup
    with pytest.raises(ProofError):
        prm.verify(OTHER_CTX, DEV, params, proof)


def test_other_statement_is_rejected(setup, dev_keys):
    _, params, _, proof = setup
    swapped = RingPedersenParams(params.n, params.t, params.s)
    other_s = RingPedersenParams(params.n, params.s * params.t % params.n, params.t)
    other_params, _ = ring_pedersen.generate(dev_keys[3], SeededRng(23))
    for stmt in (swapped, other_s, other_params):
        with pytest.raises(ProofError):
            prm.verify(CTX, DEV, stmt, proof)


@pytest.mark.parametrize(
    "field, make",
    [
        ("A", lambda p, n: p.A[:-1]),
        ("A", lambda p, n: p.A + (p.A[0],)),
        ("A", lambda p, n: ()),
        ("A", lambda p, n: None),
        ("A", lambda p, n: _replace_at(p.A, 3, True)),
        ("A", lambda p, n: _replace_at(p.A, 3, "A")),
        ("A", lambda p, n: _replace_at(p.A, 3, 0)),
        ("A", lambda p, n: _replace_at(p.A, 3, n)),
        ("A", lambda p, n: _replace_at(p.A, 3, -p.A[3])),
        ("z", lambda p, n: p.z[:-1]),
        ("z", lambda p, n: 5),
        ("z", lambda p, n: _replace_at(p.z, 3, False)),
        ("z", lambda p, n: _replace_at(p.z, 3, "1")),
        ("z", lambda p, n: _replace_at(p.z, 3, -1)),
        ("z", lambda p, n: _replace_at(p.z, 3, n)),
        ("z", lambda p, n: _replace_at(p.z, 3, float(1))),
    ],
)
def test_malformed_proof_values_are_rejected(setup, field, make):
    _, params, _, proof = setup
    bad = dataclasses.replace(proof, **{field: make(proof, params.n)})
    with pytest.raises(ProofError):
        prm.verify(CTX, DEV, params, bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: RingPedersenParams(0, p.s, p.t),
        lambda p: RingPedersenParams(True, p.s, p.t),
        lambda p: RingPedersenParams(p.n * 2, p.s, p.t),
        lambda p: RingPedersenParams(p.n, 0, p.t),
        lambda p: RingPedersenParams(p.n, p.s, p.n),
        lambda p: RingPedersenParams(p.n, "s", p.t),
        lambda p: (p.n, p.s, p.t),
    ],
)
def test_malformed_statement_is_rejected(setup, make):
    _, params, _, proof = setup
    with pytest.raises(ProofError):
        prm.verify(CTX, DEV, make(params), proof)


def test_codec_round_trip(setup):
    _, _, _, proof = setup
    decoded = unpackb(packb(proof))
    assert decoded == proof and isinstance(decoded, prm.PrmProof)


# --- attacks ----------------------------------------------------------------


def test_s_outside_subgroup_of_t_fails(setup):
    """s' = s·u for a random u: the prover's λ no longer links s' to t."""
    sk, params, secret, _ = setup
    n = params.n
    rng = SeededRng(24)
    u = rng.randbelow(n)
    while gmpy2.gcd(u, n) != 1:
        u = rng.randbelow(n)
    bad_params = RingPedersenParams(n, params.s * u % n, params.t)
    proof = prm.prove(CTX, DEV, bad_params, secret, SeededRng(25), sk=sk)
    with pytest.raises(ProofError, match="t\\^z_i"):
        prm.verify(CTX, DEV, bad_params, proof)


def test_s_not_a_square_fails(setup):
    """t is a square, so ⟨t⟩ holds only squares; s' = -s (Jacobi +1 for Blum N) is not one."""
    sk, params, secret, _ = setup
    n = params.n
    bad_params = RingPedersenParams(n, n - params.s, params.t)
    proof = prm.prove(CTX, DEV, bad_params, secret, SeededRng(26), sk=sk)
    with pytest.raises(ProofError):
        prm.verify(CTX, DEV, bad_params, proof)


def test_wrong_lambda_fails(setup):
    sk, params, secret, _ = setup
    wrong = RingPedersenSecret(secret.lam + 1, secret.phi)
    proof = prm.prove(CTX, DEV, params, wrong, SeededRng(27), sk=sk)
    with pytest.raises(ProofError):
        prm.verify(CTX, DEV, params, proof)


@pytest.mark.parametrize("guess", [0, 1])
def test_cheater_guessing_all_challenges_fails(setup, guess):
    """Without λ one can answer e_i = 0 (A = t^z) or e_i = 1 (A = t^z / s), not both."""
    _, params, _, _ = setup
    n, s, t = params.n, params.s, params.t
    rng = SeededRng(28 + guess)
    zs = tuple(rng.randbelow(n) for _ in range(DEV.m))
    s_inv = gmpy2.invert(s, n)
    A = tuple(int(gmpy2.powmod(t, z, n) * (s_inv if guess else 1) % n) for z in zs)
    with pytest.raises(ProofError):
        prm.verify(CTX, DEV, params, prm.PrmProof(A, zs))


@pytest.mark.slow
def test_honest_run_at_cggmp21_128():
    level = LEVELS["cggmp21-128"]
    sk = paillier_keys("cggmp21-128", 2)[1]
    params, secret = ring_pedersen.generate(sk, SeededRng(4))
    t0 = time.perf_counter()
    proof = prm.prove(CTX, level, params, secret, SeededRng(5), sk=sk)
    t1 = time.perf_counter()
    prm.verify(CTX, level, params, proof)
    t2 = time.perf_counter()
    print(f"\nΠprm cggmp21-128: prove {t1 - t0:.3f}s verify {t2 - t1:.3f}s")
