"""Πaff-g: completeness, binding to context and statement, range checks, malformed input."""

from __future__ import annotations

import dataclasses

import pytest

from engine.crypto import ring_pedersen
from engine.crypto.group import G, Point, base_mul
from engine.crypto.security import get_level
from engine.crypto.transcript import proof_context
from engine.crypto.zk import aff_g
from engine.crypto.zk.common import ProofError, sample_pm
from schemas.codec import packb, unpackb
from tests.conftest import SeededRng, paillier_keys

LEVEL = get_level("dev-2048")
CTX = proof_context(b"exec-affg-1", 1, b"to-2")
_STATEMENT = ("C", "D", "Y", "X")


@dataclasses.dataclass
class Env:
    level: object
    sk_i: object  # prover's Paillier key: pk1 = N_i
    sk_j: object  # verifier's Paillier key: pk0 = N_j, also the owner of aux
    aux: object
    C: int
    D: int
    Y: int
    X: Point
    x: int
    y: int
    rho: int
    rho_y: int

    @property
    def pk0(self):
        return self.sk_j.public

    @property
    def pk1(self):
        return self.sk_i.public


def make_env(level, sk_i, sk_j, seed: int, x: int | None = None, y: int | None = None, aux_key=None) -> Env:
    rng = SeededRng(seed)
    aux, _ = ring_pedersen.generate(aux_key or sk_j, rng)
    pk0, pk1 = sk_j.public, sk_i.public
    if x is None:
        x = int(sample_pm(level.ell, rng))
    if y is None:
        y = int(sample_pm(level.ell_prime, rng))
    C, _ = pk0.encrypt(int(sample_pm(level.ell, rng)), rng)  # the verifier's K_j
    enc_y, rho = pk0.encrypt(y, rng)
    D = pk0.add(pk0.mul(x, C), enc_y)  # D = (x ⊙ C) ⊕ enc_{N_j}(y; ρ)
    Y, rho_y = pk1.encrypt(y, rng)  # Y = enc_{N_i}(y; ρ_y)
    return Env(level, sk_i, sk_j, aux, int(C), int(D), int(Y), base_mul(x), x, y, int(rho), int(rho_y))


@pytest.fixture(scope="module")
def env(dev_keys) -> Env:
    return make_env(LEVEL, dev_keys[0], dev_keys[1], 13)


def make_proof(env, rng, **kw):
    return aff_g.prove(
        CTX, env.level, env.aux, env.pk0, env.pk1, env.C, env.D, env.Y, env.X,
        env.x, env.y, env.rho, env.rho_y, rng, **kw,
    )


@pytest.fixture(scope="module")
def proof(env) -> aff_g.AffGProof:
    return make_proof(env, SeededRng(23), sk1=env.sk_i)


def check(env, proof, ctx=CTX, **kw):
    stmt = {k: kw.pop(k, getattr(env, k)) for k in _STATEMENT}
    aff_g.verify(
        ctx, env.level, env.aux, env.pk0, env.pk1, stmt["C"], stmt["D"], stmt["Y"], stmt["X"], proof, **kw
    )


# -- completeness --------------------------------------------------------------


def test_honest_proof_verifies(env, proof):
    check(env, proof)
    check(env, proof, sk0=env.sk_j)


def test_crt_accelerator_gives_identical_proof(env, proof):
    assert make_proof(env, SeededRng(23)) == proof


def test_extreme_witnesses(dev_keys):
    for x, y in ((1 << LEVEL.ell, -(1 << LEVEL.ell_prime)), (-(1 << LEVEL.ell), 1 << LEVEL.ell_prime), (0, 0)):
        e = make_env(LEVEL, dev_keys[0], dev_keys[1], 14, x=x, y=y)
        check(e, make_proof(e, SeededRng(1), sk1=e.sk_i), sk0=e.sk_j)


def test_aux_on_a_third_modulus(dev_keys):
    """N̂ ≠ N_j: sk0 then accelerates only the Paillier equation."""
    e = make_env(LEVEL, dev_keys[0], dev_keys[1], 15, aux_key=dev_keys[3])
    p = make_proof(e, SeededRng(1))
    check(e, p)
    check(e, p, sk0=e.sk_j)


def test_mismatched_accelerator_key_is_a_caller_error(env, proof):
    with pytest.raises(ValueError) as exc:
        check(env, proof, sk0=env.sk_i)
    assert not isinstance(exc.value, ProofError)
    with pytest.raises(ValueError):
        make_proof(env, SeededRng(1), sk1=env.sk_j)


# -- soundness: tampering and binding ------------------------------------------


def _tamper(value):
    return value + G if isinstance(value, Point) else value + 1


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(aff_g.AffGProof)])
def test_tampered_field_rejected(env, proof, field):
    bad = dataclasses.replace(proof, **{field: _tamper(getattr(proof, field))})
    with pytest.raises(ProofError):
        check(env, bad)
    with pytest.raises(ProofError):
        check(env, bad, sk0=env.sk_j)


@pytest.mark.parametrize(
    "ctx",
    [
        proof_context(b"exec-affg-2", 1, b"to-2"),
        proof_context(b"exec-affg-1", 2, b"to-2"),
        proof_context(b"exec-affg-1", 1, b"to-3"),
    ],
)
def test_other_context_rejected(env, proof, ctx):
    with pytest.raises(ProofError, match="Πaff-g"):
        check(env, proof, ctx=ctx)


def test_other_statement_rejected(env, proof):
    rng = SeededRng(4)
    pk0, pk1 = env.pk0, env.pk1
    other_C, _ = pk0.encrypt(5, rng)
    D_rerand = pk0.add(env.D, pk0.encrypt(0, rng)[0])  # same plaintext, other randomness
    D_shift = pk0.add(env.D, pk0.encrypt(1, rng)[0])
    Y_rerand = pk1.add(env.Y, pk1.encrypt(0, rng)[0])
    for kw in (
        {"C": int(other_C)},
        {"D": int(D_rerand)},
        {"D": int(D_shift)},
        {"Y": int(Y_rerand)},
        {"X": env.X + G},
    ):
        with pytest.raises(ProofError):
            check(env, proof, **kw)


def test_other_level_or_aux_rejected(env, proof, dev_keys):
    with pytest.raises(ProofError):
        aff_g.verify(CTX, get_level("cggmp21-128"), env.aux, env.pk0, env.pk1, env.C, env.D, env.Y, env.X, proof)
    other_aux, _ = ring_pedersen.generate(dev_keys[2], SeededRng(9))
    with pytest.raises(ProofError):
        aff_g.verify(CTX, env.level, other_aux, env.pk0, env.pk1, env.C, env.D, env.Y, env.X, proof)


def _crafted(env, monkeypatch, z1_target=None, z2_target=None) -> aff_g.AffGProof:
    """Every equation holds and z1/z2 hit the targets (challenge pinned to e = 1)."""
    e = 1
    monkeypatch.setattr(aff_g, "_challenge", lambda *a, **kw: e)
    honest = aff_g._sample(env.level, env.aux, env.pk0, env.pk1, SeededRng(8))
    nc = dataclasses.replace(
        honest,
        alpha=honest.alpha if z1_target is None else z1_target - e * env.x,
        beta=honest.beta if z2_target is None else z2_target - e * env.y,
    )
    first = aff_g._first_message(env.aux, env.pk0, env.pk1, env.C, env.x, env.y, nc, None)
    resp = aff_g._respond(env.pk0, env.pk1, e, env.x, env.y, env.rho, env.rho_y, nc, None)
    p = aff_g._assemble(first, resp)
    assert z1_target is None or p.z1 == z1_target
    assert z2_target is None or p.z2 == z2_target
    return p


@pytest.mark.parametrize("sign", [1, -1])
def test_z1_just_outside_range_rejected(env, monkeypatch, sign):
    bound = 1 << (env.level.ell + env.level.epsilon)
    check(env, _crafted(env, monkeypatch, z1_target=sign * bound), sk0=env.sk_j)  # boundary: accepted
    with pytest.raises(ProofError, match="z1 out of range"):
        check(env, _crafted(env, monkeypatch, z1_target=sign * (bound + 1)))


@pytest.mark.parametrize("sign", [1, -1])
def test_z2_just_outside_range_rejected(env, monkeypatch, sign):
    bound = 1 << (env.level.ell_prime + env.level.epsilon)
    check(env, _crafted(env, monkeypatch, z2_target=sign * bound), sk0=env.sk_j)  # boundary: accepted
    with pytest.raises(ProofError, match="z2 out of range"):
        check(env, _crafted(env, monkeypatch, z2_target=sign * (bound + 1)))


@pytest.mark.parametrize("field", ["z3", "z4"])
def test_z3_z4_size_cap(env, proof, field):
    cap = (1 << (env.level.ell + env.level.epsilon + 1)) * env.aux.n
    for v in (cap + 1, -(1 << 40_000)):
        with pytest.raises(ProofError, match=field):
            check(env, dataclasses.replace(proof, **{field: v}))


@pytest.mark.parametrize("which", ["x", "y"])
def test_out_of_range_witness_fails(dev_keys, which):
    """Alpha-Rays lesson: a huge x or y cannot pass, even from an otherwise honest prover."""
    big = 1 << (LEVEL.ell_prime + LEVEL.epsilon + 10)
    e = make_env(LEVEL, dev_keys[0], dev_keys[1], 16, **{which: big})
    with pytest.raises(ProofError, match=("z1" if which == "x" else "z2") + " out of range"):
        check(e, make_proof(e, SeededRng(3), sk1=e.sk_i), sk0=e.sk_j)


# -- malformed input -------------------------------------------------------------


def _bad_values(env, field):
    if field == "Bx":
        return [None, 0, 1, True, b"\x02" * 33, env.X.to_bytes()]
    vals = [True, False, "1", None, 1.0, b"\x01"]
    n0, n1, nh = env.pk0.n, env.pk1.n, env.aux.n
    group = {
        "A": (n0 * n0, env.sk_j.p),
        "By": (n1 * n1, env.sk_i.q),
        "E": (nh, env.sk_j.p),
        "S": (nh, env.sk_j.q),
        "F": (nh, env.sk_j.p),
        "T": (nh, env.sk_j.q),
        "w": (n0, env.sk_j.p),
        "wy": (n1, env.sk_i.p),
    }.get(field)
    if group is not None:
        n, non_unit = group
        vals += [0, -1, -5, n, n + 1, non_unit]
    return vals


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(aff_g.AffGProof)])
def test_malformed_field_rejected(env, proof, field):
    for v in _bad_values(env, field):
        with pytest.raises(ProofError):
            check(env, dataclasses.replace(proof, **{field: v}))
        with pytest.raises(ProofError):
            check(env, dataclasses.replace(proof, **{field: v}), sk0=env.sk_j)


def test_malformed_statement_and_proof_object(env, proof):
    n0sq, n1sq = env.pk0.n ** 2, env.pk1.n ** 2
    for name, nn, n in (("C", n0sq, env.pk0.n), ("D", n0sq, env.pk0.n), ("Y", n1sq, env.pk1.n)):
        for v in (0, -1, nn, nn + 1, n, True, "x", None):
            with pytest.raises(ProofError, match=name):
                check(env, proof, **{name: v})
    # a ciphertext under the wrong modulus: Y is valid mod N_i² but C must be mod N_j²
    if env.Y >= n0sq:
        with pytest.raises(ProofError, match="C"):
            check(env, proof, C=env.Y)
    for P in (None, 5, env.X.to_bytes()):
        with pytest.raises(ProofError, match="X"):
            check(env, proof, X=P)
    for obj in (None, (proof.A, proof.Bx), "proof"):
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
    e = make_env(level, sk_i, sk_j, 33)
    p = make_proof(e, SeededRng(2), sk1=sk_i)
    check(e, p)
    check(e, p, sk0=sk_j)
