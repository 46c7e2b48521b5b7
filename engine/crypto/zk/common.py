"""Shared pieces of the zero-knowledge proofs."""

from __future__ import annotations

import gmpy2
from gmpy2 import mpz

from engine.crypto.group import Rng

__all__ = ["ProofError", "sample_pm", "in_pm", "check_unit", "check_int"]


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
