"""Πenc: Paillier encryption in range (CGGMP21 Fig. 14; spec §"Πenc").

Statement: K = enc_{N_i}(k; ρ) with k ∈ ±2^ℓ. The prover (party i) owns the
Paillier key N_i; the verifier (party j) owns the ring-Pedersen parameters
R_j = (N̂, s, t) passed as ``aux``. The proof convinces j that k ∈ ±2^{ℓ+ε}.

First message (S, A, C), challenge e ∈ ±2^{q_bits}, response (z1, z2, z3):

    S = s^k t^μ mod N̂        A = enc_{N_i}(α; r)        C = s^α t^γ mod N̂
    z1 = α + e·k             z2 = r·ρ^e mod N_i          z3 = γ + e·μ

with α ← ±2^{ℓ+ε}, μ ← ±2^ℓ·N̂, r ← Z*_{N_i}, γ ← ±2^{ℓ+ε}·N̂.

Security:

* verify MUST check z1 ∈ ±2^{ℓ+ε}. Without it a prover can encrypt an
  arbitrary k (the Alpha-Rays / TSSHOCK family of attacks on range proofs).
* verify MUST check that K and A are in Z*_{N_i²}, that S and C are in Z*_{N̂}
  and that z2 is in Z*_{N_i} before computing with them.
* The challenge MUST be derived by the verifier from ``ctx`` (execution id and
  prover id), the level, R_j, N_i, K and the whole first message (S, A, C).
* The prover MUST sample fresh α, μ, r, γ for each proof and MUST NOT reuse them.

``sk`` (the prover's own key for N_i) and ``aux_sk`` (the verifier's own key
for N̂) only switch exponentiations to CRT; results are identical without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gmpy2
from gmpy2 import mpz

from engine.crypto.group import Rng
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
    range_challenge,
    unit,
)
from schemas.codec import wire

__all__ = ["EncProof", "prove", "verify"]

_DOMAIN = "zk/enc"
_NAME = "Πenc"


@wire("zk.enc")
@dataclass(frozen=True)
class EncProof:
    S: int  # S = s^k t^μ mod N̂
    A: int  # A = enc_{N_i}(α; r)
    C: int  # C = s^α t^γ mod N̂
    z1: int  # z1 = α + e·k
    z2: int  # z2 = r·ρ^e mod N_i
    z3: int  # z3 = γ + e·μ


# -- helpers -----------------------------------------------------------------

_unit = partial(unit, proof=_NAME)
_modulus = partial(modulus, proof=_NAME)


def _challenge(
    ctx: bytes, level: SecurityLevel, aux: RingPedersenParams, n: int, K: int, S: int, A: int, C: int
) -> int:
    """e ∈ ±2^{q_bits} from the state, R_j, the statement (N_i, K) and (S, A, C)."""
    return range_challenge(
        _DOMAIN,
        ctx,
        level,
        aux,
        [("N", int(n)), ("K", int(K)), ("S", int(S)), ("A", int(A)), ("C", int(C))],
    )


def _first_message(
    aux: RingPedersenParams,
    pk: PaillierPublicKey,
    k: int,
    alpha: int,
    mu: int,
    r: int,
    gamma: int,
    sk: PaillierSecretKey | None,
) -> tuple[mpz, mpz, mpz]:
    """(S, A, C) for given nonces."""
    S = aux.commit(k, mu)  # S = s^k t^μ mod N̂
    A = (sk if sk is not None else pk).encrypt_with(alpha, r)  # A = enc_{N_i}(α; r)
    C = aux.commit(alpha, gamma)  # C = s^α t^γ mod N̂
    return S, A, C


# -- prover and verifier -----------------------------------------------------


def prove(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    pk: PaillierPublicKey,
    K: int,
    k: int,
    rho: int,
    rng: Rng,
    *,
    sk: PaillierSecretKey | None = None,
) -> EncProof:
    """Prove K = enc_{N_i}(k; ρ) with k in range, for the verifier owning ``aux``."""
    if sk is not None:  # pk.n is read only when a key is given
        matching_key(sk, pk.n, "sk", proof=_NAME, against="the prover's Paillier key")
    alpha, mu, r, gamma = enc_nonces(level, aux.n, pk.n, rng)
    S, A, C = _first_message(aux, pk, k, alpha, mu, r, gamma, sk)
    e = _challenge(ctx, level, aux, pk.n, K, S, A, C)
    z1, z2, z3 = enc_response(pk.n_mpz, e, k, rho, alpha, mu, r, gamma, sk)
    return EncProof(S=int(S), A=int(A), C=int(C), z1=int(z1), z2=int(z2), z3=int(z3))


def verify(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    pk: PaillierPublicKey,
    K: int,
    proof: EncProof,
    *,
    aux_sk: PaillierSecretKey | None = None,
) -> None:
    """Return None if ``proof`` is valid for (N_i, K); raise :class:`ProofError` otherwise."""
    if aux_sk is not None:  # aux.n is read only when a key is given
        matching_key(aux_sk, aux.n, "aux_sk", proof=_NAME, against="the ring-Pedersen modulus")
    if not isinstance(proof, EncProof):
        raise ProofError(f"{_NAME}: not an EncProof")
    n = _modulus(pk.n, "N")
    nn = n * n
    n_hat = _modulus(aux.n, "N̂")
    ell, eps = level.ell, level.epsilon

    # membership of the statement and of every proof element
    K = _unit(K, nn, "K", "Z*_{N²}")
    S = _unit(proof.S, n_hat, "S", "Z*_{N̂}")
    A = _unit(proof.A, nn, "A", "Z*_{N²}")
    C = _unit(proof.C, n_hat, "C", "Z*_{N̂}")
    z1 = check_int(proof.z1, f"{_NAME}: z1")
    z2 = _unit(proof.z2, n, "z2", "Z*_N")
    z3 = check_int(proof.z3, f"{_NAME}: z3")

    # range check (the soundness-critical one), then a size cap on z3 that no
    # honest proof reaches: |z3| ≤ 2^{ℓ+ε}·N̂ + 2^{q_bits}·2^ℓ·N̂ ≤ 2^{ℓ+ε+1}·N̂
    if not in_pm(z1, ell + eps):
        raise ProofError(f"{_NAME}: z1 out of range")
    if not in_pm(z3, ell + eps + 1, n_hat):
        raise ProofError(f"{_NAME}: z3 exceeds its size bound")

    e = _challenge(ctx, level, aux, int(n), int(K), int(S), int(A), int(C))

    # A ⊕ (e ⊙ K) = enc_{N_i}(z1; z2) mod N_i²
    lhs = A * gmpy2.powmod(K, e, nn) % nn
    if lhs != pk.encrypt_with(z1, z2):
        raise ProofError(f"{_NAME}: A·K^e != enc(z1; z2)")

    # s^z1 t^z3 = C·S^e mod N̂
    if aux.commit(z1, z3, sk=aux_sk) != C * aux.powmod(S, e, sk=aux_sk) % n_hat:
        raise ProofError(f"{_NAME}: s^z1·t^z3 != C·S^e")
