"""Πenc: completeness, binding to context and statement, range checks, malformed input."""

from __future__ import annotations

import dataclasses

import pytest

from engine.crypto import ring_pedersen
from engine.crypto.security import get_level
from engine.crypto.transcript import proof_context
from engine.crypto.zk import enc
from engine.crypto.zk.common import ProofError, enc_response, sample_pm
from schemas.codec import packb, unpackb
from tests.conftest import SeededRng, paillier_keys

LEVEL = get_level("dev-2048")
CTX = proof_context(b"exec-enc-1", 1)


@dataclasses.dataclass
class Env:
    level: object
    sk_i: object  # prover's Paillier key
    sk_j: object  # verifier's Paillier key (owner of aux)
    aux: object
    K: int
    k: int
    rho: int

    @property
    def pk(self):
        return self.sk_i.public


def make_env(level, sk_i, sk_j, seed: int) -> Env:
    rng = SeededRng(seed)
    aux, _ = ring_pedersen.generate(sk_j, rng)
    k = int(sample_pm(level.ell, rng))
    K, rho = sk_i.public.encrypt(k, rng)
    return Env(level, sk_i, sk_j, aux, int(K), k, int(rho))


@pytest.fixture(scope="module")
def env(dev_keys) -> Env:
    return make_env(LEVEL, dev_keys[0], dev_keys[1], 11)


@pytest.fixture(scope="module")
def proof(env) -> enc.EncProof:
    return enc.prove(CTX, env.level, env.aux, env.pk, env.K, env.k, env.rho, SeededRng(21), sk=env.sk_i)


_SAME = object()


def check(env, proof, ctx=CTX, K=_SAME, **kw):
    enc.verify(ctx, env.level, env.aux, env.pk, env.K if K is _SAME else K, proof, **kw)


# -- completeness --------------------------------------------------------------


def test_honest_proof_verifies(env, proof):
    check(env, proof)
    check(env, proof, aux_sk=env.sk_j)


def test_crt_accelerator_gives_identical_proof(env, proof):
    plain = enc.prove(CTX, env.level, env.aux, env.pk, env.K, env.k, env.rho, SeededRng(21))
    assert plain == proof


def test_negative_witness(env):
    rng = SeededRng(3)
    k = -(1 << env.level.ell)
    K, rho = env.pk.encrypt(k, rng)
    p = enc.prove(CTX, env.level, env.aux, env.pk, int(K), k, int(rho), rng)
    check(env, p, K=int(K))


def test_mismatched_accelerator_key_is_a_caller_error(env, proof):
    with pytest.raises(ValueError) as exc:
        check(env, proof, aux_sk=env.sk_i)
    assert not isinstance(exc.value, ProofError)
    with pytest.raises(ValueError):
        enc.prove(CTX, env.level, env.aux, env.pk, env.K, env.k, env.rho, SeededRng(1), sk=env.sk_j)


# -- soundness: tampering and binding ------------------------------------------


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(enc.EncProof)])
def test_tampered_field_rejected(env, proof, field):
    bad = dataclasses.replace(proof, **{field: getattr(proof, field) + 1})
    with pytest.raises(ProofError):
        check(env, bad)
    with pytest.raises(ProofError):
        check(env, bad, aux_sk=env.sk_j)


@pytest.mark.parametrize(
    "ctx",
    [proof_context(b"exec-enc-2", 1), proof_context(b"exec-enc-1", 2), proof_context(b"exec-enc-1", 1, b"rid")],
)
def test_other_context_rejected(env, proof, ctx):
    with pytest.raises(ProofError, match="Πenc"):
        check(env, proof, ctx=ctx)


def test_other_statement_rejected(env, proof):
    rng = SeededRng(4)
    same_k, _ = env.pk.encrypt(env.k, rng)
    other_k, _ = env.pk.encrypt(env.k + 1, rng)
    for K in (same_k, other_k):
        with pytest.raises(ProofError):
            check(env, proof, K=int(K))


def test_other_level_or_aux_rejected(env, proof, dev_keys):
    with pytest.raises(ProofError):
        enc.verify(CTX, get_level("cggmp21-128"), env.aux, env.pk, env.K, proof)
    other_aux, _ = ring_pedersen.generate(dev_keys[2], SeededRng(9))
    with pytest.raises(ProofError):
        enc.verify(CTX, env.level, other_aux, env.pk, env.K, proof)


def _crafted(env, monkeypatch, z1_target: int) -> enc.EncProof:
    """A proof whose every equation holds and whose z1 is ``z1_target``.

    The challenge is pinned to e = 1 so α can be chosen after the fact; this
    isolates the range check from the algebraic checks.
    """
    e = 1
    monkeypatch.setattr(enc, "_challenge", lambda *a, **kw: e)
    rng = SeededRng(8)
    alpha = z1_target - e * env.k
    mu = int(sample_pm(env.level.ell, rng, env.aux.n))
    r = 12345
    gamma = int(sample_pm(env.level.ell + env.level.epsilon, rng, env.aux.n))
    S, A, C = enc._first_message(env.aux, env.pk, env.k, alpha, mu, r, gamma, None)
    z1, z2, z3 = enc_response(env.pk.n_mpz, e, env.k, env.rho, alpha, mu, r, gamma, None)
    assert z1 == z1_target
    return enc.EncProof(int(S), int(A), int(C), int(z1), int(z2), int(z3))


@pytest.mark.parametrize("sign", [1, -1])
def test_z1_just_outside_range_rejected(env, monkeypatch, sign):
    bound = 1 << (env.level.ell + env.level.epsilon)
    check(env, _crafted(env, monkeypatch, sign * bound))  # on the boundary: accepted
    with pytest.raises(ProofError, match="z1 out of range"):
        check(env, _crafted(env, monkeypatch, sign * (bound + 1)))


def test_z3_size_cap(env, proof):
    cap = (1 << (env.level.ell + env.level.epsilon + 1)) * env.aux.n
    with pytest.raises(ProofError, match="z3"):
        check(env, dataclasses.replace(proof, z3=cap + 1))
    with pytest.raises(ProofError, match="z3"):
        check(env, dataclasses.replace(proof, z3=-(1 << 40_000)))


def test_out_of_range_witness_fails(env):
    """Alpha-Rays lesson: an honest-looking prover with a huge k cannot pass the range check."""
    rng = SeededRng(6)
    k = 1 << (env.level.ell + env.level.epsilon + 10)
    K, rho = env.pk.encrypt(k, rng)
    p = enc.prove(CTX, env.level, env.aux, env.pk, int(K), k, int(rho), rng, sk=env.sk_i)
    with pytest.raises(ProofError, match="z1 out of range"):
        check(env, p, K=int(K))


# -- malformed input -------------------------------------------------------------

def _group(env, field):
    """(modulus, a non-unit below it) for fields that must be units, else None."""
    return {
        "S": (env.aux.n, env.sk_j.p),
        "C": (env.aux.n, env.sk_j.p),
        "A": (env.pk.n**2, env.pk.n),
        "z2": (env.pk.n, env.sk_i.q),
    }.get(field)


def _bad_values(env, field):
    vals = [True, False, "1", None, 1.0, b"\x01"]
    group = _group(env, field)
    if group is not None:
        n, non_unit = group
        vals += [0, -1, -5, n, n + 1, non_unit]
    return vals


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(enc.EncProof)])
def test_malformed_field_rejected(env, proof, field):
    for v in _bad_values(env, field):
        bad = dataclasses.replace(proof, **{field: v})
        with pytest.raises(ProofError):
            check(env, bad)


def test_malformed_statement_and_proof_object(env, proof):
    n2 = env.pk.n**2
    for K in (0, -env.K, n2, n2 + env.K, env.pk.n, True, "x", None):
        with pytest.raises(ProofError, match="K"):
            check(env, proof, K=K)
    for obj in (None, (proof.S, proof.A), "proof"):
        with pytest.raises(ProofError):
            check(env, obj)


# -- wire ----------------------------------------------------------------------


def test_codec_round_trip(proof):
    assert unpackb(packb(proof)) == proof


# -- production level ----------------------------------------------------------


@pytest.mark.slow
def test_cggmp21_128_honest():
    level = get_level("cggmp21-128")
    sk_i, sk_j = paillier_keys("cggmp21-128", 2)
    e = make_env(level, sk_i, sk_j, 31)
    p = enc.prove(CTX, level, e.aux, e.pk, e.K, e.k, e.rho, SeededRng(2), sk=sk_i)
    enc.verify(CTX, level, e.aux, e.pk, e.K, p)
    enc.verify(CTX, level, e.aux, e.pk, e.K, p, aux_sk=sk_j)
