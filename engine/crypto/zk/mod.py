"""Πmod: proof that N is a Paillier-Blum modulus (CGGMP21, Fig. 16).

Statement: N = p·q with p ≡ q ≡ 3 (mod 4) and gcd(N, φ(N)) = 1. The prover
shows, for m = ``level.m`` challenges y_i ∈ Z_N derived by Fiat–Shamir, that
it can take N-th roots (so gcd(N, φ(N)) = 1) and fourth roots of one of
±y_i, ±w·y_i (so every element of Z*_N is, up to the sign and w, a fourth
power, which only happens for Blum integers with two prime factors).

Non-interactive form: the challenge is squeezed from a transcript in domain
``zk/mod`` holding, in this order, the shared state ``ctx`` (execution id,
prover id, ρ), the security level's name, N and the first message w.

Security:
    * verify MUST reject unless N is an odd composite integer greater than 1.
    * verify MUST reject unless w ∈ Z*_N has Jacobi symbol (w/N) = -1.
    * verify MUST reject unless every tuple holds exactly m entries, every
      a_i, b_i is 0 or 1, and every x_i, z_i lies in Z*_N.
    * verify MUST check z_i^N ≡ y_i and x_i^4 ≡ (-1)^a_i · w^b_i · y_i (mod N)
      for every i, with y_i recomputed from the transcript (never taken from
      the proof).
    * A failed proof MUST be reported as :class:`ProofError`; messages name
      the failed check only.
    * The prover's factors MUST stay secret: they are used only through CRT
      and never appear in errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from engine.crypto.paillier import PaillierSecretKey
from engine.crypto.security import SecurityLevel
from engine.crypto.transcript import Transcript
from engine.crypto.zk.common import ProofError, check_int, check_unit
from schemas.codec import wire

__all__ = ["ModProof", "prove", "verify"]

_DOMAIN = "zk/mod"


@wire("zk.mod")
@dataclass(frozen=True)
class ModProof:
    w: int  # w, Jacobi symbol -1
    x: tuple[int, ...]  # x_i, fourth roots
    a: tuple[int, ...]  # a_i ∈ {0, 1}
    b: tuple[int, ...]  # b_i ∈ {0, 1}
    z: tuple[int, ...]  # z_i, N-th roots of y_i


def _challenge(ctx: bytes, level: SecurityLevel, n: mpz, w: mpz) -> list[int]:
    tr = Transcript(_DOMAIN)
    tr.append("ctx", bytes(ctx))
    tr.append("level", level.name)
    tr.append("N", n)
    tr.append("w", w)
    return tr.challenge_mod(n, level.m)  # y_1..y_m


def _sample_w(n: mpz, rng) -> mpz:
    """Uniform w ∈ Z_N with Jacobi symbol (w/N) = -1 (such w is automatically a unit)."""
    while True:
        w = mpz(rng.randbelow(int(n)))
        if w > 0 and gmpy2.jacobi(w, n) == -1:
            return w


def _sign(j: int) -> int:
    """Map a Legendre symbol to ±1 (0 only for y_i sharing a factor with N; treat it as +1)."""
    return -1 if j == -1 else 1


def prove(ctx: bytes, level: SecurityLevel, sk: PaillierSecretKey, rng) -> ModProof:
    """Prove that ``sk.n`` is a Paillier-Blum modulus.

    For a non-Blum factorisation the function still returns promptly; the
    result then fails verification. Raises ValueError only when
    gcd(N, φ(N)) ≠ 1 (no N-th roots exist).
    """
    p, q = mpz(sk.p), mpz(sk.q)
    n = p * q
    phi = (p - 1) * (q - 1)  # φ(N)
    if gmpy2.gcd(n, phi) != 1:
        raise ValueError("gcd(N, phi(N)) != 1")
    try:
        n_inv = gmpy2.invert(n, phi)  # N' = N^-1 mod φ(N)
    except ZeroDivisionError:
        raise ValueError("N is not invertible modulo phi(N)") from None

    # Per-prime exponents. For a Blum prime p, y ↦ y^((p+1)/4) is the square
    # root that is itself a residue; applying it twice gives the principal
    # fourth root, so one exponent ((p+1)/4)^2 mod (p-1) does both steps.
    # For p ≡ 1 (mod 4) the floor division yields a meaningless exponent and
    # the proof simply fails to verify, which is the intended behaviour.
    root_p = ((p + 1) // 4) ** 2 % (p - 1)
    root_q = ((q + 1) // 4) ** 2 % (q - 1)
    inv_p = n_inv % (p - 1)
    inv_q = n_inv % (q - 1)
    beta = gmpy2.invert(p, q)  # p^-1 mod q for CRT recombination

    def crt(rp: mpz, rq: mpz) -> mpz:
        return rp + ((rq - rp) * beta % q) * p

    w = _sample_w(n, rng)
    w_p, w_q = w % p, w % q
    jw_p = _sign(gmpy2.jacobi(w_p, p))

    ys = _challenge(ctx, level, n, w)
    xs: list[int] = []
    as_: list[int] = []
    bs: list[int] = []
    zs: list[int] = []
    for y in ys:
        y = mpz(y)
        y_p, y_q = y % p, y % q
        jy_p = _sign(gmpy2.jacobi(y_p, p))
        jy_q = _sign(gmpy2.jacobi(y_q, q))
        # -1 is a non-residue mod both Blum primes and w is a non-residue mod
        # exactly one of them. Multiplying by w is needed iff y's symbols
        # differ; afterwards a sign flip fixes both symbols at once.
        b = 0 if jy_p == jy_q else 1  # b_i
        s_p = jy_p * (jw_p if b else 1)
        a = 0 if s_p == 1 else 1  # a_i
        yy_p = y_p * (w_p if b else 1) % p  # y'_i mod p
        yy_q = y_q * (w_q if b else 1) % q  # y'_i mod q
        if a:
            yy_p = (-yy_p) % p
            yy_q = (-yy_q) % q
        x = crt(gmpy2.powmod(yy_p, root_p, p), gmpy2.powmod(yy_q, root_q, q))  # x_i
        z = crt(gmpy2.powmod(y_p, inv_p, p), gmpy2.powmod(y_q, inv_q, q))  # z_i = y_i^N'
        xs.append(int(x))
        as_.append(a)
        bs.append(b)
        zs.append(int(z))
    return ModProof(int(w), tuple(xs), tuple(as_), tuple(bs), tuple(zs))


def _check_tuple(v: object, m: int, what: str) -> tuple:
    if not isinstance(v, (tuple, list)):
        raise ProofError(f"Πmod: {what} is not a sequence")
    if len(v) != m:
        raise ProofError(f"Πmod: {what} has the wrong length")
    return tuple(v)


def verify(ctx: bytes, level: SecurityLevel, n: int, proof: ModProof) -> None:
    """Accept (return None) or raise :class:`ProofError` naming the failed check."""
    if not isinstance(proof, ModProof):
        raise ProofError("Πmod: not a ModProof")
    n = check_int(n, "Πmod: N")
    if n <= 1 or n % 2 == 0:
        raise ProofError("Πmod: N is not an odd integer greater than 1")
    if gmpy2.is_prime(n):
        raise ProofError("Πmod: N is prime")
    m = level.m
    w = check_unit(proof.w, n, "Πmod: w")
    if gmpy2.jacobi(w, n) != -1:
        raise ProofError("Πmod: w does not have Jacobi symbol -1")
    xs = _check_tuple(proof.x, m, "x")
    as_ = _check_tuple(proof.a, m, "a")
    bs = _check_tuple(proof.b, m, "b")
    zs = _check_tuple(proof.z, m, "z")
    xs = [check_unit(x, n, "Πmod: x_i") for x in xs]
    zs = [check_unit(z, n, "Πmod: z_i") for z in zs]
    for a, b in zip(as_, bs):
        if check_int(a, "Πmod: a_i") not in (0, 1) or check_int(b, "Πmod: b_i") not in (0, 1):
            raise ProofError("Πmod: a_i or b_i is not a bit")

    ys = _challenge(ctx, level, n, w)
    for x, a, b, z, y in zip(xs, as_, bs, zs, ys):
        y = mpz(y)
        if gmpy2.powmod(z, n, n) != y:
            raise ProofError("Πmod: z_i^N != y_i")
        rhs = y * w % n if b else y  # (-1)^a_i w^b_i y_i
        if a:
            rhs = (n - rhs) % n
        x2 = x * x % n
        if x2 * x2 % n != rhs:
            raise ProofError("Πmod: x_i^4 != (-1)^a_i w^b_i y_i")
