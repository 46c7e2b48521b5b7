"""Πlog*: group element vs. Paillier encryption in range (CGGMP21 Fig. 25; spec §"Πlog*").

Statement: C = enc_{N_i}(x; ρ) and X = x·B for a curve point B, with x ∈ ±2^ℓ.
The prover (party i) owns the Paillier key N_i; the verifier (party j) owns the
ring-Pedersen parameters R_j = (N̂, s, t) passed as ``aux``. The proof
convinces j that the same x ∈ ±2^{ℓ+ε} is behind C and X.

First message (S, A, Y, D), challenge e ∈ ±2^{q_bits}, response (z1, z2, z3):

    S = s^x t^μ mod N̂     A = enc_{N_i}(α; r)     Y = α·B     D = s^α t^γ mod N̂
    z1 = α + e·x          z2 = r·ρ^e mod N_i      z3 = γ + e·μ

with α ← ±2^{ℓ+ε}, μ ← ±2^ℓ·N̂, r ← Z*_{N_i}, γ ← ±2^{ℓ+ε}·N̂.

Security:

* verify MUST check z1 ∈ ±2^{ℓ+ε}; without the range check the proof says
  nothing about the size of the plaintext.
* verify MUST check that C and A are in Z*_{N_i²}, S and D in Z*_{N̂}, z2 in
  Z*_{N_i} and that X, B and Y are curve points before computing with them.
* The challenge MUST be derived by the verifier from ``ctx`` (execution id and
  prover id), the level, R_j, the statement (N_i, C, X, B) and the whole first
  message (S, A, Y, D).
* The prover MUST sample fresh α, μ, r, γ for each proof.

``sk`` (the prover's own key for N_i) and ``aux_sk`` (the verifier's own key
for N̂) only switch exponentiations to CRT; results are identical without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gmpy2
from gmpy2 import mpz

from engine.crypto.group import Point, Rng
from engine.crypto.paillier import PaillierPublicKey, PaillierSecretKey
from engine.crypto.ring_pedersen import RingPedersenParams
from engine.crypto.security import SecurityLevel
from engine.crypto.zk.common import (
    ProofError,
    check_int,
    enc_nonces,
    enc_response,
    in_pm,
    matching_key,
    modulus,
    point,
    range_challenge,
    unit,
)
from schemas.codec import wire

__all__ = ["LogStarProof", "prove", "verify"]

_DOMAIN = "zk/logstar"
_NAME = "Πlog*"


@wire("zk.logstar")
@dataclass(frozen=True)
class LogStarProof:
    S: int  # S = s^x t^μ mod N̂
    A: int  # A = enc_{N_i}(α; r)
    Y: Point  # Y = α·B
    D: int  # D = s^α t^γ mod N̂
    z1: int  # z1 = α + e·x
    z2: int  # z2 = r·ρ^e mod N_i
    z3: int  # z3 = γ + e·μ


# -- helpers -----------------------------------------------------------------

_unit = partial(unit, proof=_NAME)
_modulus = partial(modulus, proof=_NAME)
_point = partial(point, proof=_NAME)


def _challenge(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    n: int,
    C: int,
    X: Point,
    B: Point,
    S: int,
    A: int,
    Y: Point,
    D: int,
) -> int:
    """e ∈ ±2^{q_bits} from the state, R_j, the statement (N_i, C, X, B) and (S, A, Y, D)."""
    return range_challenge(
        _DOMAIN,
        ctx,
        level,
        aux,
        [
            ("N", int(n)),
            ("C", int(C)),
            ("X", X),
            ("B", B),
            ("S", int(S)),
            ("A", int(A)),
            ("Y", Y),
            ("D", int(D)),
        ],
    )


def _first_message(
    aux: RingPedersenParams,
    pk: PaillierPublicKey,
    B: Point,
    x: int,
    alpha: int,
    mu: int,
    r: int,
    gamma: int,
    sk: PaillierSecretKey | None,
) -> tuple[mpz, mpz, Point, mpz]:
    """(S, A, Y, D) for given nonces."""
    S = aux.commit(x, mu)  # S = s^x t^μ mod N̂
    A = (sk if sk is not None else pk).encrypt_with(alpha, r)  # A = enc_{N_i}(α; r)
    Y = B * int(alpha)  # Y = α·B
    D = aux.commit(alpha, gamma)  # D = s^α t^γ mod N̂
    return S, A, Y, D


# -- prover and verifier -----------------------------------------------------


def prove(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    pk: PaillierPublicKey,
    C: int,
    X: Point,
    B: Point,
    x: int,
    rho: int,
    rng: Rng,
    *,
    sk: PaillierSecretKey | None = None,
) -> LogStarProof:
    """Prove C = enc_{N_i}(x; ρ) and X = x·B with x in range, for the verifier owning ``aux``."""
    if sk is not None:  # pk.n is read only when a key is given
        matching_key(sk, pk.n, "sk", proof=_NAME, against="the prover's Paillier key")
    alpha, mu, r, gamma = enc_nonces(level, aux.n, pk.n, rng)
    S, A, Y, D = _first_message(aux, pk, B, x, alpha, mu, r, gamma, sk)
    e = _challenge(ctx, level, aux, pk.n, C, X, B, S, A, Y, D)
    z1, z2, z3 = enc_response(pk.n_mpz, e, x, rho, alpha, mu, r, gamma, sk)
    return LogStarProof(S=int(S), A=int(A), Y=Y, D=int(D), z1=int(z1), z2=int(z2), z3=int(z3))


def verify(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    pk: PaillierPublicKey,
    C: int,
    X: Point,
    B: Point,
    proof: LogStarProof,
    *,
    aux_sk: PaillierSecretKey | None = None,
) -> None:
    """Return None if ``proof`` is valid for (N_i, C, X, B); raise :class:`ProofError` otherwise."""
    if aux_sk is not None:  # aux.n is read only when a key is given
        matching_key(aux_sk, aux.n, "aux_sk", proof=_NAME, against="the ring-Pedersen modulus")
    if not isinstance(proof, LogStarProof):
        raise ProofError(f"{_NAME}: not a LogStarProof")
    n = _modulus(pk.n, "N")
    nn = n * n
    n_hat = _modulus(aux.n, "N̂")
    ell, eps = level.ell, level.epsilon

    # membership of the statement and of every proof element
    C = _unit(C, nn, "C", "Z*_{N²}")
    X = _point(X, "X")
    B = _point(B, "B")
    S = _unit(proof.S, n_hat, "S", "Z*_{N̂}")
    A = _unit(proof.A, nn, "A", "Z*_{N²}")
    Y = _point(proof.Y, "Y")
    D = _unit(proof.D, n_hat, "D", "Z*_{N̂}")
    z1 = check_int(proof.z1, f"{_NAME}: z1")
    z2 = _unit(proof.z2, n, "z2", "Z*_N")
    z3 = check_int(proof.z3, f"{_NAME}: z3")

    # range check, then a size cap on z3 that no honest proof reaches
    # (|z3| ≤ 2^{ℓ+ε}·N̂ + 2^{q_bits}·2^ℓ·N̂ ≤ 2^{ℓ+ε+1}·N̂)
    if not in_pm(z1, ell + eps):
        raise ProofError(f"{_NAME}: z1 out of range")
    if not in_pm(z3, ell + eps + 1, n_hat):
        raise ProofError(f"{_NAME}: z3 exceeds its size bound")

    e = _challenge(ctx, level, aux, int(n), int(C), X, B, int(S), int(A), Y, int(D))

    # enc_{N_i}(z1; z2) = A ⊕ (e ⊙ C) mod N_i²
    if pk.encrypt_with(z1, z2) != A * gmpy2.powmod(C, e, nn) % nn:
        raise ProofError(f"{_NAME}: enc(z1; z2) != A·C^e")

    # z1·B = Y + e·X
    if B * int(z1) != Y + X * e:
        raise ProofError(f"{_NAME}: z1·B != Y + e·X")

    # s^z1 t^z3 = D·S^e mod N̂
    if aux.commit(z1, z3, sk=aux_sk) != D * aux.powmod(S, e, sk=aux_sk) % n_hat:
        raise ProofError(f"{_NAME}: s^z1·t^z3 != D·S^e")
