"""Πaff-g: Paillier affine operation with group commitment in range
(CGGMP21 Fig. 15; spec §"Πaff-g").

Statement, with pk0 = N_j (the verifier's Paillier key) and pk1 = N_i (the
prover's):

    D = (x ⊙ C) ⊕ enc_{N_j}(y; ρ)     Y = enc_{N_i}(y; ρ_y)     X = x·G

with x ∈ ±2^ℓ and y ∈ ±2^{ℓ'}. The ring-Pedersen parameters R_j = (N̂, s, t)
in ``aux`` belong to the verifier (in the protocol N̂ = N_j). The proof
convinces j that x ∈ ±2^{ℓ+ε} and y ∈ ±2^{ℓ'+ε}.

First message (A, B_x, B_y, E, S, F, T), challenge e ∈ ±2^{q_bits}, response
(z1, z2, z3, z4, w, w_y):

    A = (α ⊙ C) ⊕ enc_{N_j}(β; r)   B_x = α·G   B_y = enc_{N_i}(β; r_y)
    E = s^α t^γ   S = s^x t^m   F = s^β t^δ   T = s^y t^μ      (all mod N̂)
    z1 = α + e·x   z2 = β + e·y   z3 = γ + e·m   z4 = δ + e·μ
    w = r·ρ^e mod N_j   w_y = r_y·ρ_y^e mod N_i

with α ← ±2^{ℓ+ε}, β ← ±2^{ℓ'+ε}, r ← Z*_{N_j}, r_y ← Z*_{N_i},
γ, δ ← ±2^{ℓ+ε}·N̂, m, μ ← ±2^ℓ·N̂.

Security:

* verify MUST check z1 ∈ ±2^{ℓ+ε} and z2 ∈ ±2^{ℓ'+ε}. Without them a prover
  can feed the MtA an out-of-range x or y and learn the verifier's secret from
  the decryption (the Alpha-Rays / TSSHOCK lesson).
* verify MUST check that C, D and A are in Z*_{N_j²}, Y and B_y in Z*_{N_i²},
  E, S, F, T in Z*_{N̂}, w in Z*_{N_j}, w_y in Z*_{N_i}, and that X and B_x are
  curve points, before computing with them.
* The challenge MUST be derived by the verifier from ``ctx`` (execution id and
  prover id), the level, R_j, the statement (N_j, N_i, C, D, Y, X) and the
  whole first message.
* The prover MUST sample fresh nonces for every proof.

``sk1`` (the prover's key for N_i) and ``sk0`` (the verifier's key for N_j,
also used for N̂ when N̂ = N_j) only switch exponentiations to CRT; results are
identical without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gmpy2
from gmpy2 import mpz

from engine.crypto.group import Point, Rng, base_mul
from engine.crypto.paillier import PaillierPublicKey, PaillierSecretKey, sample_unit
from engine.crypto.ring_pedersen import RingPedersenParams
from engine.crypto.security import SecurityLevel
from engine.crypto.zk.common import (
    ProofError,
    check_int,
    in_pm,
    matching_key,
    modulus,
    point,
    range_challenge,
    sample_pm,
    unit,
)
from schemas.codec import wire

__all__ = ["AffGProof", "prove", "verify"]

_DOMAIN = "zk/affg"
_NAME = "Πaff-g"


@wire("zk.affg")
@dataclass(frozen=True)
class AffGProof:
    A: int  # A = (α ⊙ C) ⊕ enc_{N_j}(β; r)
    Bx: Point  # B_x = α·G
    By: int  # B_y = enc_{N_i}(β; r_y)
    E: int  # E = s^α t^γ mod N̂
    S: int  # S = s^x t^m mod N̂
    F: int  # F = s^β t^δ mod N̂
    T: int  # T = s^y t^μ mod N̂
    z1: int  # z1 = α + e·x
    z2: int  # z2 = β + e·y
    z3: int  # z3 = γ + e·m
    z4: int  # z4 = δ + e·μ
    w: int  # w = r·ρ^e mod N_j
    wy: int  # w_y = r_y·ρ_y^e mod N_i


@dataclass(frozen=True, repr=False)
class _Nonces:
    alpha: int  # α
    beta: int  # β
    r: int  # r
    r_y: int  # r_y
    gamma: int  # γ
    delta: int  # δ
    m: int  # m
    mu: int  # μ


# -- helpers -----------------------------------------------------------------

_unit = partial(unit, proof=_NAME)
_modulus = partial(modulus, proof=_NAME)
_point = partial(point, proof=_NAME)
_matching = partial(matching_key, proof=_NAME)


def _challenge(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    n0: int,
    n1: int,
    C: int,
    D: int,
    Y: int,
    X: Point,
    first: tuple,
) -> int:
    """e ∈ ±2^{q_bits} from the state, R_j, (N_j, N_i, C, D, Y, X) and (A, B_x, B_y, E, S, F, T)."""
    A, Bx, By, E, S, F, T = first
    return range_challenge(
        _DOMAIN,
        ctx,
        level,
        aux,
        [
            ("N0", int(n0)),
            ("N1", int(n1)),
            ("C", int(C)),
            ("D", int(D)),
            ("Y", int(Y)),
            ("X", X),
            ("A", int(A)),
            ("Bx", Bx),
            ("By", int(By)),
            ("E", int(E)),
            ("S", int(S)),
            ("F", int(F)),
            ("T", int(T)),
        ],
    )


def _sample(
    level: SecurityLevel, aux: RingPedersenParams, pk0: PaillierPublicKey, pk1: PaillierPublicKey, rng: Rng
) -> _Nonces:
    ell, ell_p, eps = level.ell, level.ell_prime, level.epsilon
    return _Nonces(
        alpha=int(sample_pm(ell + eps, rng)),  # α ← ±2^{ℓ+ε}
        beta=int(sample_pm(ell_p + eps, rng)),  # β ← ±2^{ℓ'+ε}
        r=int(sample_unit(pk0.n, rng)),  # r ← Z*_{N_j}
        r_y=int(sample_unit(pk1.n, rng)),  # r_y ← Z*_{N_i}
        gamma=int(sample_pm(ell + eps, rng, aux.n)),  # γ ← ±2^{ℓ+ε}·N̂
        delta=int(sample_pm(ell + eps, rng, aux.n)),  # δ ← ±2^{ℓ+ε}·N̂
        m=int(sample_pm(ell, rng, aux.n)),  # m ← ±2^ℓ·N̂
        mu=int(sample_pm(ell, rng, aux.n)),  # μ ← ±2^ℓ·N̂
    )


def _first_message(
    aux: RingPedersenParams,
    pk0: PaillierPublicKey,
    pk1: PaillierPublicKey,
    C: int,
    x: int,
    y: int,
    nc: _Nonces,
    sk1: PaillierSecretKey | None,
) -> tuple:
    """(A, B_x, B_y, E, S, F, T) for given nonces."""
    nn0 = pk0.nn
    A = pk0.mul(nc.alpha, C) * pk0.encrypt_with(nc.beta, nc.r) % nn0  # A = (α ⊙ C) ⊕ enc_{N_j}(β; r)
    Bx = base_mul(nc.alpha)  # B_x = α·G
    By = (sk1 if sk1 is not None else pk1).encrypt_with(nc.beta, nc.r_y)  # B_y = enc_{N_i}(β; r_y)
    E = aux.commit(nc.alpha, nc.gamma)  # E = s^α t^γ
    S = aux.commit(x, nc.m)  # S = s^x t^m
    F = aux.commit(nc.beta, nc.delta)  # F = s^β t^δ
    T = aux.commit(y, nc.mu)  # T = s^y t^μ
    return A, Bx, By, E, S, F, T


def _respond(
    pk0: PaillierPublicKey,
    pk1: PaillierPublicKey,
    e: int,
    x: int,
    y: int,
    rho: int,
    rho_y: int,
    nc: _Nonces,
    sk1: PaillierSecretKey | None,
) -> tuple:
    n0, n1 = pk0.n_mpz, pk1.n_mpz
    z1 = nc.alpha + e * int(x)  # z1 = α + e·x
    z2 = nc.beta + e * int(y)  # z2 = β + e·y
    z3 = nc.gamma + e * nc.m  # z3 = γ + e·m
    z4 = nc.delta + e * nc.mu  # z4 = δ + e·μ
    w = mpz(nc.r) * gmpy2.powmod(mpz(rho), e, n0) % n0  # w = r·ρ^e mod N_j
    rho_y_e = sk1.powmod_n(rho_y, e) if sk1 is not None else gmpy2.powmod(mpz(rho_y), e, n1)
    wy = mpz(nc.r_y) * rho_y_e % n1  # w_y = r_y·ρ_y^e mod N_i
    return z1, z2, z3, z4, w, wy


def _assemble(first: tuple, resp: tuple) -> AffGProof:
    A, Bx, By, E, S, F, T = first
    z1, z2, z3, z4, w, wy = resp
    return AffGProof(
        A=int(A), Bx=Bx, By=int(By), E=int(E), S=int(S), F=int(F), T=int(T),
        z1=int(z1), z2=int(z2), z3=int(z3), z4=int(z4), w=int(w), wy=int(wy),
    )


# -- prover and verifier -----------------------------------------------------


def prove(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    pk0: PaillierPublicKey,
    pk1: PaillierPublicKey,
    C: int,
    D: int,
    Y: int,
    X: Point,
    x: int,
    y: int,
    rho: int,
    rho_y: int,
    rng: Rng,
    *,
    sk1: PaillierSecretKey | None = None,
) -> AffGProof:
    """Prove D = (x ⊙ C) ⊕ enc_{N_j}(y; ρ), Y = enc_{N_i}(y; ρ_y), X = x·G with x, y in range."""
    sk1 = _matching(sk1, pk1.n, "sk1")
    nc = _sample(level, aux, pk0, pk1, rng)
    first = _first_message(aux, pk0, pk1, C, x, y, nc, sk1)
    e = _challenge(ctx, level, aux, pk0.n, pk1.n, C, D, Y, X, first)
    return _assemble(first, _respond(pk0, pk1, e, x, y, rho, rho_y, nc, sk1))


def verify(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    pk0: PaillierPublicKey,
    pk1: PaillierPublicKey,
    C: int,
    D: int,
    Y: int,
    X: Point,
    proof: AffGProof,
    *,
    sk0: PaillierSecretKey | None = None,
) -> None:
    """Return None if ``proof`` is valid for (N_j, N_i, C, D, Y, X); raise :class:`ProofError` otherwise."""
    sk0 = _matching(sk0, pk0.n, "sk0")
    aux_sk = sk0 if sk0 is not None and int(sk0.n) == int(aux.n) else None
    if not isinstance(proof, AffGProof):
        raise ProofError(f"{_NAME}: not an AffGProof")
    n0 = _modulus(pk0.n, "N_j")
    n1 = _modulus(pk1.n, "N_i")
    n_hat = _modulus(aux.n, "N̂")
    nn0, nn1 = n0 * n0, n1 * n1
    ell, ell_p, eps = level.ell, level.ell_prime, level.epsilon

    # membership of the statement and of every proof element
    C = _unit(C, nn0, "C", "Z*_{N_j²}")
    D = _unit(D, nn0, "D", "Z*_{N_j²}")
    Y = _unit(Y, nn1, "Y", "Z*_{N_i²}")
    X = _point(X, "X")
    A = _unit(proof.A, nn0, "A", "Z*_{N_j²}")
    Bx = _point(proof.Bx, "Bx")
    By = _unit(proof.By, nn1, "By", "Z*_{N_i²}")
    E = _unit(proof.E, n_hat, "E", "Z*_{N̂}")
    S = _unit(proof.S, n_hat, "S", "Z*_{N̂}")
    F = _unit(proof.F, n_hat, "F", "Z*_{N̂}")
    T = _unit(proof.T, n_hat, "T", "Z*_{N̂}")
    z1 = check_int(proof.z1, f"{_NAME}: z1")
    z2 = check_int(proof.z2, f"{_NAME}: z2")
    z3 = check_int(proof.z3, f"{_NAME}: z3")
    z4 = check_int(proof.z4, f"{_NAME}: z4")
    w = _unit(proof.w, n0, "w", "Z*_{N_j}")
    wy = _unit(proof.wy, n1, "wy", "Z*_{N_i}")

    # range checks, then size caps on z3, z4 that no honest proof reaches
    # (|z3|, |z4| ≤ 2^{ℓ+ε}·N̂ + 2^{q_bits}·2^ℓ·N̂ ≤ 2^{ℓ+ε+1}·N̂)
    if not in_pm(z1, ell + eps):
        raise ProofError(f"{_NAME}: z1 out of range")
    if not in_pm(z2, ell_p + eps):
        raise ProofError(f"{_NAME}: z2 out of range")
    if not in_pm(z3, ell + eps + 1, n_hat):
        raise ProofError(f"{_NAME}: z3 exceeds its size bound")
    if not in_pm(z4, ell + eps + 1, n_hat):
        raise ProofError(f"{_NAME}: z4 exceeds its size bound")

    e = _challenge(ctx, level, aux, int(n0), int(n1), int(C), int(D), int(Y), X, (A, Bx, By, E, S, F, T))

    # A ⊕ (e ⊙ D) = (z1 ⊙ C) ⊕ enc_{N_j}(z2; w) mod N_j²
    if sk0 is not None:
        lhs = A * sk0.powmod_n2(D, e) % nn0
        rhs = sk0.powmod_n2(C, z1) * sk0.encrypt_with(z2, w) % nn0
    else:
        lhs = A * gmpy2.powmod(D, e, nn0) % nn0
        rhs = gmpy2.powmod(C, z1, nn0) * pk0.encrypt_with(z2, w) % nn0
    if lhs != rhs:
        raise ProofError(f"{_NAME}: A·D^e != C^z1·enc(z2; w)")

    # z1·G = B_x + e·X
    if base_mul(int(z1)) != Bx + X * e:
        raise ProofError(f"{_NAME}: z1·G != Bx + e·X")

    # B_y ⊕ (e ⊙ Y) = enc_{N_i}(z2; w_y) mod N_i²
    if By * gmpy2.powmod(Y, e, nn1) % nn1 != pk1.encrypt_with(z2, wy):
        raise ProofError(f"{_NAME}: By·Y^e != enc(z2; wy)")

    # s^z1 t^z3 = E·S^e mod N̂
    if aux.commit(z1, z3, sk=aux_sk) != E * aux.powmod(S, e, sk=aux_sk) % n_hat:
        raise ProofError(f"{_NAME}: s^z1·t^z3 != E·S^e")

    # s^z2 t^z4 = F·T^e mod N̂
    if aux.commit(z2, z4, sk=aux_sk) != F * aux.powmod(T, e, sk=aux_sk) % n_hat:
        raise ProofError(f"{_NAME}: s^z2·t^z4 != F·T^e")
