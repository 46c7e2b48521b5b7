"""Πfac: proof that a Paillier modulus has no small factor (CGGMP21, Fig. 26).

Statement: N_i = p·q with both factors above 2^ℓ (equivalently both below
2^ℓ·√N_i). The prover commits to p and q under the verifier's ring-Pedersen
parameters R_j = (N̂, s, t), shows in zero knowledge that the committed values
multiply to N_i, and reveals z1 = α + e·p, z2 = β + e·q whose size bounds the
factors: a factor far below √N_i forces the other one far above it, and then
z1 or z2 leaves ±2^(ℓ+ε)·√N_i. This is the check that stops small-factor
("BitForge") moduli, which Πmod alone accepts.

√N_i is always ``gmpy2.isqrt(N_i)``, both for the prover's sampling ranges
and for the verifier's range checks.

Non-interactive form: the challenge e ∈ ±2^q_bits is squeezed from a
transcript in domain ``zk/fac`` holding, in this order, the shared state
``ctx`` (execution id, prover id, ρ), the security level's name, the
auxiliary parameters (N̂, s, t), N_i and the first message
(P, Q, A, B, T, σ).

Security:
    * verify MUST reject unless P, Q, A, B, T lie in Z*_N̂ and σ, z1, z2, w1,
      w2, v are integers (booleans and other types are rejected).
    * verify MUST reject unless z1, z2 ∈ ±(2^(ℓ+ε)·√N_i).
    * verify MUST check s^z1·t^w1 ≡ A·P^e, s^z2·t^w2 ≡ B·Q^e and
      Q^z1·t^v ≡ T·(s^N_i·t^σ)^e (mod N̂), with e recomputed from the
      transcript (never taken from the proof).
    * verify also bounds σ, w1, w2 and v by generous multiples of their honest
      ranges (not in the paper). This cannot reject an honest proof, and it
      caps the size of the exponents an attacker can make the verifier use.
    * The auxiliary parameters MUST be the verifier's own, validated and
      proven with Πprm; a CRT accelerator ``aux_sk`` is used only if its
      modulus equals N̂, and never changes the outcome.
    * A failed proof MUST be reported as :class:`ProofError`; messages name
      the failed check only. p, q and the masks MUST never leave the prover.
"""

from __future__ import annotations

from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from engine.crypto.paillier import PaillierSecretKey
from engine.crypto.ring_pedersen import RingPedersenParams
from engine.crypto.security import SecurityLevel
from engine.crypto.transcript import Transcript
from engine.crypto.zk.common import ProofError, check_int, check_unit, in_pm, ring_pedersen_elements, sample_pm
from schemas.codec import wire

__all__ = ["FacProof", "prove", "verify"]

_DOMAIN = "zk/fac"


@wire("zk.fac")
@dataclass(frozen=True)
class FacProof:
    P: int  # P = s^p t^μ mod N̂
    Q: int  # Q = s^q t^ν mod N̂
    A: int  # A = s^α t^x mod N̂
    B: int  # B = s^β t^y mod N̂
    T: int  # T = Q^α t^r mod N̂
    sigma: int  # σ
    z1: int  # z1 = α + e·p
    z2: int  # z2 = β + e·q
    w1: int  # w1 = x + e·μ
    w2: int  # w2 = y + e·ν
    v: int  # v = r + e·(σ - ν·p)


def _challenge(
    ctx: bytes,
    level: SecurityLevel,
    aux_n: mpz,
    aux_s: mpz,
    aux_t: mpz,
    n: mpz,
    first: tuple[mpz, mpz, mpz, mpz, mpz, mpz],
) -> int:
    tr = Transcript(_DOMAIN)
    tr.append("ctx", bytes(ctx))
    tr.append("level", level.name)
    tr.append("aux.N", aux_n)
    tr.append("aux.s", aux_s)
    tr.append("aux.t", aux_t)
    tr.append("N", n)
    for label, value in zip(("P", "Q", "A", "B", "T", "sigma"), first):
        tr.append(label, value)
    return tr.challenge_signed(level.q_bits)  # e ∈ ±Q


def prove(
    ctx: bytes, level: SecurityLevel, aux: RingPedersenParams, sk: PaillierSecretKey, rng
) -> FacProof:
    """Prove that sk.n = p·q has no small factor, under the verifier's ``aux``.

    The prover does not check its own factors: with bad factors it returns a
    proof that fails verification.
    """
    p, q = mpz(sk.p), mpz(sk.q)
    n = p * q  # N_i
    aux_n, s, t = mpz(aux.n), mpz(aux.s), mpz(aux.t)  # N̂ = N_j, s_j, t_j
    ell, eps = level.ell, level.epsilon  # ℓ, ε
    sqrt_n = gmpy2.isqrt(n)  # √N_i

    alpha = sample_pm(ell + eps, rng, sqrt_n)  # α ← ±2^(ℓ+ε)·√N_i
    beta = sample_pm(ell + eps, rng, sqrt_n)  # β ← ±2^(ℓ+ε)·√N_i
    mu = sample_pm(ell, rng, aux_n)  # μ ← ±2^ℓ·N̂
    nu = sample_pm(ell, rng, aux_n)  # ν ← ±2^ℓ·N̂
    sigma = sample_pm(ell, rng, n * aux_n)  # σ ← ±2^ℓ·N_i·N̂
    r = sample_pm(ell + eps, rng, n * aux_n)  # r ← ±2^(ℓ+ε)·N_i·N̂
    x = sample_pm(ell + eps, rng, aux_n)  # x ← ±2^(ℓ+ε)·N̂
    y = sample_pm(ell + eps, rng, aux_n)  # y ← ±2^(ℓ+ε)·N̂

    P = aux.commit(p, mu)
    Q = aux.commit(q, nu)
    A = aux.commit(alpha, x)
    B = aux.commit(beta, y)
    T = gmpy2.powmod(Q, alpha, aux_n) * gmpy2.powmod(t, r, aux_n) % aux_n

    e = mpz(_challenge(ctx, level, aux_n, s, t, n, (P, Q, A, B, T, sigma)))
    z1 = alpha + e * p
    z2 = beta + e * q
    w1 = x + e * mu
    w2 = y + e * nu
    v = r + e * (sigma - nu * p)
    return FacProof(*(int(val) for val in (P, Q, A, B, T, sigma, z1, z2, w1, w2, v)))


def verify(
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    n: int,
    proof: FacProof,
    *,
    aux_sk: PaillierSecretKey | None = None,
) -> None:
    """Accept (return None) or raise :class:`ProofError` naming the failed check.

    ``aux_sk`` is the verifier's own key for N̂ = aux.n; it only speeds up the
    exponentiations (CRT) and is ignored if its modulus differs.
    """
    if not isinstance(proof, FacProof):
        raise ProofError("Πfac: not a FacProof")
    aux_n, s, t = ring_pedersen_elements(aux, proof="Πfac", label="aux ")
    n = check_int(n, "Πfac: N")
    if n <= 1:
        raise ProofError("Πfac: N is not an integer greater than 1")

    P = check_unit(proof.P, aux_n, "Πfac: P")
    Q = check_unit(proof.Q, aux_n, "Πfac: Q")
    A = check_unit(proof.A, aux_n, "Πfac: A")
    B = check_unit(proof.B, aux_n, "Πfac: B")
    T = check_unit(proof.T, aux_n, "Πfac: T")
    sigma = check_int(proof.sigma, "Πfac: sigma")
    z1 = check_int(proof.z1, "Πfac: z1")
    z2 = check_int(proof.z2, "Πfac: z2")
    w1 = check_int(proof.w1, "Πfac: w1")
    w2 = check_int(proof.w2, "Πfac: w2")
    v = check_int(proof.v, "Πfac: v")

    ell, eps = level.ell, level.epsilon  # ℓ, ε
    sqrt_n = gmpy2.isqrt(n)  # √N_i
    if not in_pm(z1, ell + eps, sqrt_n):
        raise ProofError("Πfac: z1 out of range")
    if not in_pm(z2, ell + eps, sqrt_n):
        raise ProofError("Πfac: z2 out of range")
    # Work bounds (see module docstring): honest |σ| ≤ 2^ℓ·N_i·N̂,
    # |w| ≤ 2^(ℓ+ε+1)·N̂ and |v| ≤ 2^(ℓ+ε+1)·N_i·N̂ because ε > log Q + 1.
    if not in_pm(sigma, ell + eps, n * aux_n):
        raise ProofError("Πfac: sigma out of range")
    if not (in_pm(w1, ell + eps + 2, aux_n) and in_pm(w2, ell + eps + 2, aux_n)):
        raise ProofError("Πfac: w1 or w2 out of range")
    if not in_pm(v, ell + eps + 2, n * aux_n):
        raise ProofError("Πfac: v out of range")

    if aux_sk is not None and mpz(aux_sk.n) != aux_n:
        aux_sk = None  # not the key of N̂: ignore the accelerator

    def pw(base: mpz, exp: mpz) -> mpz:
        # All bases are units of Z_N̂ (checked above), so negative exponents are fine.
        if aux_sk is not None:
            return aux_sk.powmod_n(base, exp)
        return gmpy2.powmod(base, exp, aux_n)

    e = mpz(_challenge(ctx, level, aux_n, s, t, n, (P, Q, A, B, T, sigma)))

    if pw(s, z1) * pw(t, w1) % aux_n != A * pw(P, e) % aux_n:
        raise ProofError("Πfac: s^z1 t^w1 != A P^e")
    if pw(s, z2) * pw(t, w2) % aux_n != B * pw(Q, e) % aux_n:
        raise ProofError("Πfac: s^z2 t^w2 != B Q^e")
    r_base = pw(s, n) * pw(t, sigma) % aux_n  # s^N_i t^σ
    if pw(Q, z1) * pw(t, v) % aux_n != T * pw(r_base, e) % aux_n:
        raise ProofError("Πfac: Q^z1 t^v != T (s^N t^sigma)^e")
