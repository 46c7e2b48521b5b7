"""Ring-Pedersen parameters (N̂, s, t) with s = t^λ mod N̂ (CGGMP21 §3.2, Def. 3.3).

Every party publishes (N, s, t) for its own Paillier modulus N during aux-info;
peers use them as the auxiliary commitment base in Πenc, Πaff-g, Πlog* and Πfac.
The owner also knows N's factors and uses CRT for its own commitments and for
verifying proofs addressed to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gmpy2
from gmpy2 import mpz

from engine.crypto.fixed_base import fixed_base
from engine.crypto.group import Rng
from engine.crypto.paillier import PaillierSecretKey, _cache, sample_unit
from schemas.codec import wire

__all__ = ["RingPedersenParams", "RingPedersenSecret", "InvalidRingPedersen", "generate"]


class InvalidRingPedersen(ValueError):
    pass


@wire("rped.params")
@dataclass(frozen=True)
class RingPedersenParams:
    n: int  # N̂
    s: int
    t: int

    @property
    def n_mpz(self) -> mpz:
        return _cache(self, "_n", lambda: mpz(self.n))

    def validate(self, min_bits: int, max_bits: int | None = None) -> None:
        """Structural checks a receiver MUST run before verifying Πprm."""
        n = self.n_mpz
        if n <= 0 or n.bit_length() < min_bits:
            raise InvalidRingPedersen(f"modulus has {n.bit_length()} bits, below the required {min_bits}")
        if max_bits is not None and n.bit_length() > max_bits:
            raise InvalidRingPedersen(f"modulus has {n.bit_length()} bits, above the allowed {max_bits}")
        if n % 2 == 0:
            raise InvalidRingPedersen("modulus is even")
        for name, v in (("s", self.s), ("t", self.t)):
            v = mpz(v)
            if v <= 1 or v >= n or gmpy2.gcd(v, n) != 1:
                raise InvalidRingPedersen(f"{name} is not a nontrivial element of Z*_N")
        if self.s == self.t:
            raise InvalidRingPedersen("s equals t")

    def commit(self, x: int, y: int, sk: PaillierSecretKey | None = None) -> mpz:
        """s^x · t^y mod N̂ (negative exponents allowed). ``sk`` enables CRT for the owner."""
        if sk is not None:
            self._check_owner(sk)
            return sk.powmod_n(self.s, x) * sk.powmod_n(self.t, y) % self.n_mpz
        # the bases are fixed for as long as the owner's aux-info: precomputed tables pay off
        return fixed_base(self.s, self.n).pow(x) * fixed_base(self.t, self.n).pow(y) % self.n_mpz

    def powmod(self, base: int, exp: int, sk: PaillierSecretKey | None = None) -> mpz:
        if sk is not None:
            self._check_owner(sk)
            return sk.powmod_n(base, exp)
        return gmpy2.powmod(mpz(base), mpz(exp), self.n_mpz)

    def _check_owner(self, sk: PaillierSecretKey) -> None:
        if sk.n != self.n:
            raise ValueError("CRT key does not belong to this modulus")


@wire("rped.secret")
@dataclass(frozen=True, repr=False)
class RingPedersenSecret:
    """λ with s = t^λ, and φ(N̂). Security: MUST never be logged or stored in plaintext."""

    lam: int = field(repr=False)  # λ
    phi: int = field(repr=False)  # φ(N̂)

    def __repr__(self) -> str:
        return "RingPedersenSecret(<hidden>)"

    __str__ = __repr__


def generate(sk: PaillierSecretKey, rng: Rng) -> tuple[RingPedersenParams, RingPedersenSecret]:
    """Sample t = r² and s = t^λ for λ ← Z_φ(N), as in aux-info round 1."""
    n = mpz(sk.n)
    phi = sk.phi
    while True:
        r = sample_unit(n, rng)
        t = r * r % n
        lam = mpz(rng.randbelow(int(phi)))
        s = sk.powmod_n(t, lam)
        if t > 1 and s > 1 and s != t:
            return RingPedersenParams(int(n), int(s), int(t)), RingPedersenSecret(int(lam), int(phi))
