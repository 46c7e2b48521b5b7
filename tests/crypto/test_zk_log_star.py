"""Πlog*: completeness, binding to context and statement, range checks, malformed input."""

from __future__ import annotations

import dataclasses

import pytest

from engine.crypto import ring_pedersen
from engine.crypto.group import G, Point, base_mul, random_scalar
from engine.crypto.security import get_level
from engine.crypto.transcript import proof_context
from engine.crypto.zk import log_star
from engine.crypto.zk.common import ProofError, enc_response, sample_pm
from schemas.codec import packb, unpackb
from tests.conftest import SeededRng, paillier_keys

LEVEL = get_level("dev-2048")
CTX = proof_context(b"exec-log-1", 2)
_SAME = object()


@dataclasses.dataclass
class Env:
    level: object
    sk_i: object  # prover's Paillier key
    sk_j: object  # verifier's Paillier key (owner of aux)
    aux: object
    C: int
    X: Point
    B: Point
    x: int
    rho: int

    @property
    def pk(self):
        return self.sk_i.public


def make_env(level, sk_i, sk_j, seed: int, x: int | None = None) -> Env:
    rng = SeededRng(seed)
    aux, _ = ring_pedersen.generate(sk_j, rng)
    if x is None:
        x = int(sample_pm(level.ell, rng))
    B = base_mul(random_scalar(rng))  # a base other than G, as Γ in presigning
    C, rho = sk_i.public.encrypt(x, rng)
    return Env(level, sk_i, sk_j, aux, int(C), B * x, B, x, int(rho))


@pytest.fixture(scope="module")
def env(dev_keys) -> Env:
    return make_env(LEVEL, dev_keys[0], dev_keys[1], 12)


def make_proof(env, rng, **kw):
    return log_star.prove(CTX, env.level, env.aux, env.pk, env.C, env.X, env.B, env.x, env.rho, rng, **kw)


@pytest.fixture(scope="module")
def proof(env) -> log_star.LogStarProof:
    return make_proof(env, SeededRng(22), sk=env.sk_i)


def check(env, proof, ctx=CTX, C=_SAME, X=_SAME, B=_SAME, **kw):
    log_star.verify(
        ctx,
        env.level,
        env.aux,
        env.pk,
        env.C if C is _SAME else C,
        env.X if X is _SAME else X,
        env.B if B is _SAME else B,
        proof,
        **kw,
    )


# -- completeness --------------------------------------------------------------


def test_honest_proof_verifies(env, proof):
    check(env, proof)
    check(env, proof, aux_sk=env.sk_j)


def test_crt_accelerator_gives_identical_proof(env, proof):
    assert make_proof(env, SeededRng(22)) == proof


def test_base_g_and_negative_witness(dev_keys):
    e = make_env(LEVEL, dev_keys[0], dev_keys[1], 13, x=-(1 << LEVEL.ell))
    e = dataclasses.replace(e, B=G, X=base_mul(e.x))
    check(e, make_proof(e, SeededRng(1)))


def test_mismatched_accelerator_key_is_a_caller_error(env, proof):
    with pytest.raises(ValueError) as exc:
        check(env, proof, aux_sk=env.sk_i)
    assert not isinstance(exc.value, ProofError)
    with pytest.raises(ValueError):
        make_proof(env, SeededRng(1), sk=env.sk_j)


# -- soundness: tampering and binding ------------------------------------------


def _tamper(value):
    return value + G if isinstance(value, Point) else value + 1


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(log_star.LogStarProof)])
def test_tampered_field_rejected(env, proof, field):
    bad = dataclasses.replace(proof, **{field: _tamper(getattr(proof, field))})
    with pytest.raises(ProofError):
        check(env, bad)
    with pytest.raises(ProofError):
        check(env, bad, aux_sk=env.sk_j)


@pytest.mark.parametrize(
    "ctx",
    [proof_context(b"exec-log-2", 2), proof_context(b"exec-log-1", 3), proof_context(b"exec-log-1", 2, b"x")],
)
def test_other_context_rejected(env, proof, ctx):
    with pytest.raises(ProofError, match="Πlog"):
        check(env, proof, ctx=ctx)


def test_other_statement_rejected(env, proof):
    rng = SeededRng(4)
    same_x, _ = env.pk.encrypt(env.x, rng)
    with pytest.raises(ProofError):
        check(env, proof, C=int(same_x))
    with pytest.raises(ProofError):
        check(env, proof, X=env.X + env.B)
    with pytest.raises(ProofError):
        check(env, proof, B=G, X=base_mul(env.x))


def test_other_level_or_aux_rejected(env, proof, dev_keys):
    with pytest.raises(ProofError):
        log_star.verify(CTX, get_level("cggmp21-128"), env.aux, env.pk, env.C, env.X, env.B, proof)
    other_aux, _ = ring_pedersen.generate(dev_keys[2], SeededRng(9))
    with pytest.raises(ProofError):
        log_star.verify(CTX, env.level, other_aux, env.pk, env.C, env.X, env.B, proof)


def _crafted(env, monkeypatch, z1_target: int) -> log_star.LogStarProof:
    """Every equation holds and z1 = ``z1_target`` (challenge pinned to e = 1)."""
    e = 1
    monkeypatch.setattr(log_star, "_challenge", lambda *a, **kw: e)
    rng = SeededRng(8)
    alpha = z1_target - e * env.x
    mu = int(sample_pm(env.level.ell, rng, env.aux.n))
    r = 12345
    gamma = int(sample_pm(env.level.ell + env.level.epsilon, rng, env.aux.n))
    S, A, Y, D = log_star._first_message(env.aux, env.pk, env.B, env.x, alpha, mu, r, gamma, None)
    z1, z2, z3 = enc_response(env.pk.n_mpz, e, env.x, env.rho, alpha, mu, r, gamma, None)
    assert z1 == z1_target
    return log_star.LogStarProof(int(S), int(A), Y, int(D), int(z1), int(z2), int(z3))


@pytest.mark.parametrize("sign", [1, -1])
def test_z1_just_outside_range_rejected(env, monkeypatch, sign):
    bound = 1 << (env.level.ell + env.level.epsilon)
    check(env, _crafted(env, monkeypatch, sign * bound))  # on the boundary: accepted
    with pytest.raises(ProofError, match="z1 out of range"):
        check(env, _crafted(env, monkeypatch, sign * (bound + 1)))


def test_z3_size_cap(env, proof):
    cap = (1 << (env.level.ell + env.level.epsilon + 1)) * env.aux.n
    with pytest.raises(ProofError, match="z3"):
        check(env, dataclasses.replace(proof, z3=-cap - 1))


def test_out_of_range_witness_fails(dev_keys):
    x = 1 << (LEVEL.ell + LEVEL.epsilon + 10)
    e = make_env(LEVEL, dev_keys[0], dev_keys[1], 14, x=x)
    with pytest.raises(ProofError, match="z1 out of range"):
        check(e, make_proof(e, SeededRng(3), sk=e.sk_i))


# -- malformed input -------------------------------------------------------------


def _bad_values(env, field):
    if field == "Y":
        return [None, 0, 1, True, b"\x02" * 33, env.X.to_bytes()]
    vals = [True, False, "1", None, 1.0, b"\x01"]
    group = {
        "S": (env.aux.n, env.sk_j.p),
        "D": (env.aux.n, env.sk_j.q),
        "A": (env.pk.n**2, env.pk.n),
        "z2": (env.pk.n, env.sk_i.p),
    }.get(field)
    if group is not None:
        n, non_unit = group
        vals += [0, -1, -5, n, n + 1, non_unit]
    return vals


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(log_star.LogStarProof)])
def test_malformed_field_rejected(env, proof, field):
    for v in _bad_values(env, field):
        with pytest.raises(ProofError):
            check(env, dataclasses.replace(proof, **{field: v}))


def test_malformed_statement_and_proof_object(env, proof):
    n2 = env.pk.n**2
    for C in (0, -env.C, n2, n2 + env.C, env.pk.n, True, "x", None):
        with pytest.raises(ProofError, match="C"):
            check(env, proof, C=C)
    for P in (None, 5, env.X.to_bytes()):
        with pytest.raises(ProofError, match="X"):
            check(env, proof, X=P)
        with pytest.raises(ProofError, match="B"):
            check(env, proof, B=P)
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
    e = make_env(level, sk_i, sk_j, 32)
    p = make_proof(e, SeededRng(2), sk=sk_i)
    check(e, p)
    check(e, p, aux_sk=sk_j)
