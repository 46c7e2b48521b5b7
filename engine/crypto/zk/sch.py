"""Πsch: Schnorr proof of knowledge of x with X = x·G (CGGMP21 Fig. 22; spec §"Πsch").

The proof is split into its three moves so that key generation can publish the
commitment A = τ·G in an early round (hidden inside a hash commitment) and
answer the challenge later:

* :func:`commit` samples τ ← Z_q \\ {0} and returns (τ, A = τ·G);
* :func:`challenge` derives e ∈ Z_q by Fiat–Shamir from ``ctx``, X and A;
* :func:`respond` returns z = τ + e·x mod q;
* :func:`verify_response` accepts iff z·G = A + e·X.

:func:`prove` and :func:`verify` run the whole thing for callers that do not
need the split.

Security:

* The verifier MUST derive e itself from the same ``ctx`` (execution id and
  prover id, plus ρ/rid where the protocol says so); it MUST NOT accept a
  challenge chosen by the prover.
* The verifier MUST check that A and X are curve points and that z is an
  integer in [0, q) before using them; :func:`verify_response` does this.
* The prover MUST use a fresh τ for every proof and MUST erase it after
  responding: two responses with the same τ reveal x.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.crypto.group import Q, Point, Rng, base_mul, random_scalar
from engine.crypto.transcript import Transcript
from engine.crypto.zk.common import ProofError, check_int
from schemas.codec import wire

__all__ = ["SchProof", "commit", "challenge", "respond", "verify_response", "prove", "verify"]

_DOMAIN = "zk/sch"


@wire("zk.sch")
@dataclass(frozen=True)
class SchProof:
    A: Point  # A = τ·G
    z: int  # z = τ + e·x mod q


def commit(rng: Rng) -> tuple[int, Point]:
    """Sample the nonce τ (nonzero) and return (τ, A = τ·G)."""
    tau = random_scalar(rng)  # τ
    return tau, base_mul(tau)


def challenge(ctx: bytes, X: Point, A: Point) -> int:
    """e ∈ Z_q bound to the context, the statement X and the commitment A."""
    t = Transcript(_DOMAIN)
    t.append("ctx", ctx)
    t.append("X", X)
    t.append("A", A)
    return t.challenge_scalar()


def respond(ctx: bytes, X: Point, A: Point, tau: int, x: int) -> int:
    """z = τ + e·x mod q."""
    e = challenge(ctx, X, A)
    return (int(tau) + e * int(x)) % Q


def verify_response(ctx: bytes, X: Point, A: Point, z: int) -> None:
    """Accept iff z·G = A + e·X; raise :class:`ProofError` otherwise."""
    if not isinstance(X, Point):
        raise ProofError("Πsch: X is not a curve point")
    if not isinstance(A, Point):
        raise ProofError("Πsch: A is not a curve point")
    if A.is_identity:
        raise ProofError("Πsch: A is the identity")
    z = int(check_int(z, "Πsch: z"))
    if not 0 <= z < Q:
        raise ProofError("Πsch: z is not in Z_q")
    e = challenge(ctx, X, A)
    if base_mul(z) != A + X * e:
        raise ProofError("Πsch: z·G != A + e·X")


def prove(ctx: bytes, X: Point, x: int, rng: Rng) -> SchProof:
    tau, A = commit(rng)
    return SchProof(A=A, z=respond(ctx, X, A, tau, x))


def verify(ctx: bytes, X: Point, proof: SchProof) -> None:
    if not isinstance(proof, SchProof):
        raise ProofError("Πsch: not a Schnorr proof")
    verify_response(ctx, X, proof.A, proof.z)
