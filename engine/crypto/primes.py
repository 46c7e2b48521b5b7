"""Safe-prime generation for Paillier / ring-Pedersen moduli.

A safe prime is ``p = 2q + 1`` with ``q`` prime. Safe primes with odd ``q`` are
also Blum primes (``p ≡ 3 mod 4``), which Πmod needs.

The search sieves ``q`` and ``2q + 1`` together: over a window of candidates
``q = q0 + 2k`` every small prime ``r`` strikes the ``k`` where ``r | q`` *and* the
``k`` where ``r | 2q + 1`` (that is, ``q ≡ (r - 1)/2 mod r``). Striking is done
with bytearray slice assignment, so it runs at C speed. Survivors get a cheap
base-2 Fermat test on ``q`` and then on ``p``; only a candidate that passes both
pays for full Miller–Rabin rounds.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import gmpy2
from gmpy2 import mpz

__all__ = ["SIEVE_PRIMES", "generate_safe_prime", "is_safe_prime", "generate_blum_prime"]

_SIEVE_BOUND = 1 << 16
_WINDOW = 1 << 15
_MR_ROUNDS = 40


def _small_primes(bound: int) -> list[int]:
    sieve = bytearray([1]) * bound
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(bound**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, bound, i)))
    return [i for i in range(3, bound) if sieve[i]]


SIEVE_PRIMES: tuple[int, ...] = tuple(_small_primes(_SIEVE_BOUND))

ProgressFn = Callable[[int], None]


def is_safe_prime(p: int, rounds: int = _MR_ROUNDS) -> bool:
    """True iff ``p`` and ``(p - 1) / 2`` are both (probable) primes."""
    p = mpz(p)
    if p < 7 or p % 2 == 0:
        return p in (5, 7)
    return bool(gmpy2.is_prime(p, rounds) and gmpy2.is_prime((p - 1) // 2, rounds))


def generate_safe_prime(
    bits: int,
    *,
    progress: ProgressFn | None = None,
    randbits: Callable[[int], int] = secrets.randbits,
) -> int:
    """Return a random safe prime of exactly ``bits`` bits.

    ``progress`` is called with the running count of candidates that reached a
    primality test, roughly every window, so long searches can be reported.
    """
    if bits < 16:
        raise ValueError("safe primes below 16 bits are not supported")
    qbits = bits - 1
    tested = 0
    two = mpz(2)
    while True:
        # q0 odd with its top bit set; the window stays inside qbits bits with
        # overwhelming probability, and the final bit-length check guards it.
        q0 = mpz(randbits(qbits)) | (mpz(1) << (qbits - 1)) | 1
        alive = bytearray([1]) * _WINDOW
        for r in SIEVE_PRIMES:
            # candidate k is q0 + 2k. inv2 = 2^-1 mod r.
            inv2 = (r + 1) // 2
            q0r = int(q0 % r)
            # r | q0 + 2k  <=>  k ≡ -q0 * inv2 (mod r)
            k = (-q0r * inv2) % r
            alive[k::r] = bytes(len(range(k, _WINDOW, r)))
            # r | 2(q0 + 2k) + 1  <=>  k ≡ (-(2 q0 + 1)) * inv4 (mod r)
            k = (-(2 * q0r + 1) * inv2 * inv2) % r
            alive[k::r] = bytes(len(range(k, _WINDOW, r)))
        k = alive.find(1)
        while k != -1:
            q = q0 + 2 * k
            tested += 1
            if gmpy2.powmod(two, q - 1, q) == 1:
                p = 2 * q + 1
                if gmpy2.powmod(two, p - 1, p) == 1 and p.bit_length() == bits:
                    if gmpy2.is_prime(q, _MR_ROUNDS) and gmpy2.is_prime(p, _MR_ROUNDS):
                        if progress is not None:
                            progress(tested)
                        return int(p)
            k = alive.find(1, k + 1)
        if progress is not None:
            progress(tested)


def generate_blum_prime(
    bits: int,
    *,
    residue: int = 3,
    randbits: Callable[[int], int] = secrets.randbits,
) -> int:
    """A random (not necessarily safe) prime of ``bits`` bits with ``p ≡ residue (mod 4)``.

    Only the simulator's adversaries use this: honest parties always use safe
    primes. ``residue=1`` yields a prime that makes ``N`` non-Blum.
    """
    if residue not in (1, 3):
        raise ValueError("residue must be 1 or 3")
    while True:
        c = mpz(randbits(bits)) | (mpz(1) << (bits - 1))
        c = c - (c % 4) + residue
        p = gmpy2.next_prime(c)
        while p % 4 != residue:
            p = gmpy2.next_prime(p)
        if p.bit_length() == bits:
            return int(p)
