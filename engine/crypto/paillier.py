"""Paillier encryption over gmpy2, with CRT fast paths for the key owner.

Plaintexts are signed: ``enc(M; r) = (1 + M·N) · r^N mod N²`` for ``M`` in
``±(N-1)/2`` and decryption returns the centred representative. Homomorphic
operations: ``add(C1, C2) = C1·C2`` and ``mul(k, C) = C^k`` (``k`` may be
negative). Ciphertexts received from peers MUST pass :meth:`PaillierPublicKey.validate_ciphertext`
(membership in Z*_{N²}) before they are used.

The secret key holds the factors. It never prints them: ``repr`` shows only the
public modulus's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gmpy2
from gmpy2 import mpz

from engine.crypto.group import Rng
from schemas.codec import wire

__all__ = ["PaillierPublicKey", "PaillierSecretKey", "InvalidCiphertext", "crt_powmod", "sample_unit"]


class InvalidCiphertext(ValueError):
    """A value that is not an element of Z*_{N²}."""


def sample_unit(n: int | mpz, rng: Rng) -> mpz:
    """Uniform element of Z*_n."""
    n = mpz(n)
    while True:
        r = mpz(rng.randbelow(int(n)))
        if r > 0 and gmpy2.gcd(r, n) == 1:
            return r


@wire("paillier.pk")
@dataclass(frozen=True)
class PaillierPublicKey:
    n: int

    @property
    def nn(self) -> mpz:
        return _cache(self, "_nn", lambda: mpz(self.n) * mpz(self.n))

    @property
    def n_mpz(self) -> mpz:
        return _cache(self, "_n", lambda: mpz(self.n))

    def bit_length(self) -> int:
        return int(self.n).bit_length()

    def validate_ciphertext(self, c: int) -> mpz:
        """Return ``c`` as mpz if it is in Z*_{N²}; raise :class:`InvalidCiphertext` otherwise."""
        if isinstance(c, bool) or (not isinstance(c, int) and type(c) is not type(mpz(0))):
            raise InvalidCiphertext("ciphertext is not an integer")
        c = mpz(c)
        if c <= 0 or c >= self.nn or gmpy2.gcd(c, self.n_mpz) != 1:
            raise InvalidCiphertext("ciphertext is not in Z*_{N^2}")
        return c

    def encrypt_with(self, m: int, r: int) -> mpz:
        """enc(m; r). Raises ValueError if r is not a unit mod N."""
        n = self.n_mpz
        r = mpz(r)
        if gmpy2.gcd(r, n) != 1:
            raise ValueError("encryption randomness is not a unit mod N")
        nn = self.nn
        return ((1 + (mpz(m) % n) * n) * gmpy2.powmod(r, n, nn)) % nn

    def encrypt(self, m: int, rng: Rng) -> tuple[mpz, mpz]:
        """Encrypt with fresh randomness; returns (ciphertext, r)."""
        r = sample_unit(self.n_mpz, rng)
        return self.encrypt_with(m, r), r

    def add(self, c1: int, c2: int) -> mpz:
        return (mpz(c1) * mpz(c2)) % self.nn

    def mul(self, k: int, c: int) -> mpz:
        """k ⊙ C = C^k mod N² (negative k uses C^-1)."""
        return gmpy2.powmod(mpz(c), mpz(k), self.nn)


@wire("paillier.sk")
@dataclass(frozen=True, repr=False)
class PaillierSecretKey:
    """Factors p, q of N. Security: MUST never be logged, printed or stored in plaintext."""

    p: int = field(repr=False)
    q: int = field(repr=False)

    def __repr__(self) -> str:
        return f"PaillierSecretKey(<{(int(self.p) * int(self.q)).bit_length()}-bit modulus, factors hidden>)"

    __str__ = __repr__

    @property
    def public(self) -> PaillierPublicKey:
        return _cache(self, "_pub", lambda: PaillierPublicKey(int(self.p) * int(self.q)))

    @property
    def n(self) -> int:
        return self.public.n

    @property
    def phi(self) -> mpz:
        return (mpz(self.p) - 1) * (mpz(self.q) - 1)

    @property
    def _crt(self) -> _CrtN2:
        return _cache(self, "_crt_n2", lambda: _CrtN2(mpz(self.p), mpz(self.q)))

    @property
    def _crt_n(self) -> _CrtN:
        return _cache(self, "_crt_n1", lambda: _CrtN(mpz(self.p), mpz(self.q)))

    def powmod_n2(self, base: int, exp: int) -> mpz:
        """base^exp mod N² using the factorisation."""
        return self._crt.powmod(mpz(base), mpz(exp))

    def powmod_n(self, base: int, exp: int) -> mpz:
        """base^exp mod N using the factorisation."""
        return self._crt_n.powmod(mpz(base), mpz(exp))

    def encrypt_with(self, m: int, r: int) -> mpz:
        """enc(m; r) via CRT (the spec's enc^crt)."""
        n = self.public.n_mpz
        r = mpz(r)
        if gmpy2.gcd(r, n) != 1:
            raise ValueError("encryption randomness is not a unit mod N")
        nn = self.public.nn
        return ((1 + (mpz(m) % n) * n) * self._crt.powmod(r, n)) % nn

    def encrypt(self, m: int, rng: Rng) -> tuple[mpz, mpz]:
        r = sample_unit(self.public.n_mpz, rng)
        return self.encrypt_with(m, r), r

    def decrypt(self, c: int) -> mpz:
        """Centred plaintext in ±(N-1)/2. ``c`` MUST already be validated."""
        p, q = mpz(self.p), mpz(self.q)
        crt = self._crt
        # Paillier decryption per prime (g = 1 + N): m_p = L_p(c^(p-1) mod p²) · h_p mod p
        mp = ((gmpy2.powmod(mpz(c) % crt.pp, p - 1, crt.pp) - 1) // p) * crt.hp % p
        mq = ((gmpy2.powmod(mpz(c) % crt.qq, q - 1, crt.qq) - 1) // q) * crt.hq % q
        m = mp + ((mq - mp) * crt.p_inv_q % q) * p
        n = p * q
        return m - n if m > n // 2 else m

    def validate(self) -> None:
        """Check the factors give a Paillier-Blum modulus with gcd(N, φ(N)) = 1."""
        p, q = mpz(self.p), mpz(self.q)
        if p == q or p % 4 != 3 or q % 4 != 3:
            raise ValueError("factors are not distinct Blum primes")
        if gmpy2.gcd(p * q, (p - 1) * (q - 1)) != 1:
            raise ValueError("gcd(N, phi(N)) != 1")


class _CrtN:
    """x^e mod N = pq via CRT, exponents reduced mod p-1, q-1 (spec §2.2).

    Reducing the exponent is only sound for bases that are units mod N: callers
    MUST validate peer-supplied bases first.
    """

    def __init__(self, p: mpz, q: mpz) -> None:
        self.p, self.q = p, q
        self.beta = gmpy2.invert(p, q)

    def powmod(self, base: mpz, exp: mpz) -> mpz:
        p, q = self.p, self.q
        if exp < 0:
            base = gmpy2.invert(base, p * q)
            exp = -exp
        r1 = gmpy2.powmod(base % p, exp % (p - 1), p)
        r2 = gmpy2.powmod(base % q, exp % (q - 1), q)
        return r1 + ((r2 - r1) * self.beta % q) * p


class _CrtN2:
    """x^e mod N² = p²q² via CRT (spec Algorithm 'CRT exponentiation mod N²').

    As for :class:`_CrtN`, the base MUST be a unit mod N.
    """

    def __init__(self, p: mpz, q: mpz) -> None:
        self.pp, self.qq = p * p, q * q
        self.phi1, self.phi2 = p * (p - 1), q * (q - 1)
        self.beta = gmpy2.invert(self.pp, self.qq)
        self.p_inv_q = gmpy2.invert(p, q)
        n = p * q
        # h_p = L_p((1+N)^(p-1) mod p²)^-1 mod p, likewise for q
        self.hp = gmpy2.invert(((gmpy2.powmod(1 + n, p - 1, self.pp) - 1) // p) % p, p)
        self.hq = gmpy2.invert(((gmpy2.powmod(1 + n, q - 1, self.qq) - 1) // q) % q, q)

    def powmod(self, base: mpz, exp: mpz) -> mpz:
        if exp < 0:
            base = gmpy2.invert(base, self.pp * self.qq)
            exp = -exp
        r1 = gmpy2.powmod(base % self.pp, exp % self.phi1, self.pp)
        r2 = gmpy2.powmod(base % self.qq, exp % self.phi2, self.qq)
        return r1 + ((r2 - r1) * self.beta % self.qq) * self.pp


def crt_powmod(sk: PaillierSecretKey, base: int, exp: int) -> mpz:
    return sk.powmod_n2(base, exp)


def _cache(obj, name, make):
    """Per-instance memo on frozen dataclasses (never part of equality or the wire)."""
    d = obj.__dict__
    v = d.get(name)
    if v is None:
        v = make()
        object.__setattr__(obj, name, v)
    return v
