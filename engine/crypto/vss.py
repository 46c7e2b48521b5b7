"""Feldman VSS over secp256k1 and Lagrange coefficients.

Party ``i`` (1-based) holds the share ``f(i)``; the evaluation point is the
party id itself, so it is never zero.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.crypto.group import Q, Point, base_mul, random_scalar, Rng, sum_points

__all__ = ["sample_polynomial", "evaluate", "commitments", "evaluate_commitments", "lagrange"]


def sample_polynomial(threshold: int, rng: Rng) -> tuple[int, ...]:
    """Coefficients a_0 … a_{t-1} of a random degree t-1 polynomial."""
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    return tuple(random_scalar(rng) for _ in range(threshold))


def evaluate(coeffs: Sequence[int], x: int) -> int:
    """f(x) mod q by Horner's rule."""
    acc = 0
    for a in reversed(coeffs):
        acc = (acc * x + a) % Q
    return acc


def commitments(coeffs: Sequence[int]) -> tuple[Point, ...]:
    """Feldman commitments S_k = a_k·G."""
    return tuple(base_mul(a) for a in coeffs)


def evaluate_commitments(comms: Sequence[Point], x: int) -> Point:
    """F(x) = Σ_k x^k · S_k."""
    terms = []
    xk = 1
    for c in comms:
        terms.append(c * xk)
        xk = xk * x % Q
    return sum_points(terms)


def lagrange(signers: Sequence[int], i: int) -> int:
    """λ_i = Π_{m ≠ i} m / (m - i) mod q, the weight of party i's share at 0."""
    if i not in signers or len(set(signers)) != len(signers):
        raise ValueError("party is not in the signer set, or the set has duplicates")
    num, den = 1, 1
    for m in signers:
        if m == i:
            continue
        num = num * m % Q
        den = den * (m - i) % Q
    return num * pow(den, -1, Q) % Q
