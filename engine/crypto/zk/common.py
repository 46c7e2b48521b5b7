"""Shared pieces of the zero-knowledge proofs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import gmpy2
from gmpy2 import mpz

from engine.crypto.group import Point, Rng
from engine.crypto.transcript import Transcript

if TYPE_CHECKING:
    from engine.crypto.paillier import PaillierSecretKey
    from engine.crypto.ring_pedersen import RingPedersenParams
    from engine.crypto.security import SecurityLevel

__all__ = [
    "ProofError",
    "sample_pm",
    "in_pm",
    "check_unit",
    "check_int",
    "unit",
    "modulus",
    "point",
    "matching_key",
    "range_challenge",
    "enc_nonces",
    "enc_response",
]


class ProofError(ValueError):
    """A proof that does not verify. The message names the failed check, never a secret."""


def sample_pm(bits: int, rng: Rng, factor: int = 1) -> mpz:
    """Uniform integer in ±(2^bits · factor)."""
    bound = (mpz(1) << bits) * mpz(factor)
    return mpz(rng.randbelow(int(2 * bound + 1))) - bound


def in_pm(v: int, bits: int, factor: int = 1) -> bool:
    """v ∈ ±(2^bits · factor)."""
    return abs(mpz(v)) <= (mpz(1) << bits) * mpz(factor)


def check_int(v: object, what: str) -> mpz:
    if isinstance(v, bool) or not (isinstance(v, int) or type(v) is type(mpz(0))):
        raise ProofError(f"{what} is not an integer")
    return mpz(v)


def check_unit(v: object, n: int, what: str) -> mpz:
    """v as mpz if it lies in Z*_n; ProofError otherwise."""
    v = check_int(v, what)
    if v <= 0 or v >= n or gmpy2.gcd(v, n) != 1:
        raise ProofError(f"{what} is not in Z*_N")
    return v


# -- validation helpers for the range proofs (Πenc, Πlog*, Πaff-g) ------------
#
# ``proof`` is the proof's display name (e.g. "Πenc"); every message starts
# with it, so a failure names the proof and the failed check, never a secret.


def unit(v: object, n: mpz, what: str, space: str, *, proof: str) -> mpz:
    """v as mpz if v ∈ Z*_n, else ProofError naming the element and the group ``space``."""
    v = check_int(v, f"{proof}: {what}")
    if v <= 0 or v >= n or gmpy2.gcd(v, n) != 1:
        raise ProofError(f"{proof}: {what} is not in {space}")
    return v


def modulus(n: object, what: str, *, proof: str) -> mpz:
    """n as mpz if it is an integer ≥ 3, else ProofError."""
    n = check_int(n, f"{proof}: {what}")
    if n < 3:
        raise ProofError(f"{proof}: {what} is not a usable modulus")
    return n


def point(p: object, what: str, *, proof: str) -> Point:
    """p if it is a curve point, else ProofError."""
    if not isinstance(p, Point):
        raise ProofError(f"{proof}: {what} is not a curve point")
    return p


def matching_key(
    sk: PaillierSecretKey | None,
    n: int,
    what: str,
    *,
    proof: str,
    against: str = "its Paillier modulus",
) -> PaillierSecretKey | None:
    """``sk`` unchanged if it is None or its modulus is n.

    Otherwise ValueError (a caller error, not a bad proof):
    ``"{proof}: {what} does not match {against}"``.
    """
    if sk is not None and int(sk.n) != int(n):
        raise ValueError(f"{proof}: {what} does not match {against}")
    return sk


def range_challenge(
    domain: str,
    ctx: bytes,
    level: SecurityLevel,
    aux: RingPedersenParams,
    items: Iterable[tuple[str, object]],
) -> int:
    """e ∈ ±2^{q_bits} from a transcript in ``domain``.

    The transcript holds, in this order, ``ctx``, the level's name, the
    verifier's ring-Pedersen parameters (aux.n, aux.s, aux.t) and then
    ``items`` (the statement and the first message) as given.
    """
    t = Transcript(domain)
    t.append("ctx", ctx)
    t.append("level", level.name)
    t.append("aux.n", int(aux.n))
    t.append("aux.s", int(aux.s))
    t.append("aux.t", int(aux.t))
    t.extend(items)
    return t.challenge_signed(level.q_bits)


def enc_nonces(level: SecurityLevel, aux_n: int, n: int, rng: Rng) -> tuple[mpz, mpz, int, mpz]:
    """The prover's fresh (α, μ, r, γ) shared by Πenc and Πlog*; MUST NOT be reused across proofs."""
    from engine.crypto.paillier import sample_unit

    ell, eps = level.ell, level.epsilon
    alpha = sample_pm(ell + eps, rng)  # α ← ±2^{ℓ+ε}
    mu = sample_pm(ell, rng, aux_n)  # μ ← ±2^ℓ·N̂
    r = sample_unit(n, rng)  # r ← Z*_{N_i}
    gamma = sample_pm(ell + eps, rng, aux_n)  # γ ← ±2^{ℓ+ε}·N̂
    return alpha, mu, r, gamma


def enc_response(
    n: mpz,
    e: int,
    secret: int,
    rho: int,
    alpha: int,
    mu: int,
    r: int,
    gamma: int,
    sk: PaillierSecretKey | None,
) -> tuple[mpz, mpz, mpz]:
    """The response (z1, z2, z3) shared by Πenc and Πlog*.

    z1 = α + e·secret, z2 = r·ρ^e mod N, z3 = γ + e·μ. ``sk`` (the key for N)
    switches ρ^e to CRT.
    """
    z1 = mpz(alpha) + e * mpz(secret)  # z1 = α + e·k (Πenc) or α + e·x (Πlog*)
    rho_e = sk.powmod_n(rho, e) if sk is not None else gmpy2.powmod(mpz(rho), e, n)
    z2 = mpz(r) * rho_e % n  # z2 = r·ρ^e mod N_i
    z3 = mpz(gamma) + e * mpz(mu)  # z3 = γ + e·μ
    return z1, z2, z3


def ring_pedersen_elements(params: object, *, proof: str, label: str = "") -> tuple[mpz, mpz, mpz]:
    """(N̂, s, t) as mpz after checking N̂ is odd and > 2 and s, t are units; ProofError otherwise.

    ``label`` prefixes the element names in messages (e.g. "aux " for a verifier's R_j).
    """
    from engine.crypto.ring_pedersen import RingPedersenParams

    if not isinstance(params, RingPedersenParams):
        kind = "auxiliary parameters are" if label else "parameters are"
        raise ProofError(f"{proof}: {kind} not ring-Pedersen parameters")
    n = check_int(params.n, f"{proof}: {label}N")
    if n <= 2 or n % 2 == 0:
        raise ProofError(f"{proof}: {label}N is not an odd integer greater than 2")
    s = check_unit(params.s, n, f"{proof}: {label}s")
    t = check_unit(params.t, n, f"{proof}: {label}t")
    return n, s, t
