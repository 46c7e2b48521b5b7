"""secp256k1 scalars and points, on coincurve (libsecp256k1).

Scalars are plain ``int`` reduced mod :data:`Q`. :class:`Point` wraps a
coincurve public key and adds the identity, which libsecp256k1 cannot
represent but sums of shares can produce. Points decoded from bytes are always
on the curve and never the identity: :meth:`Point.from_bytes` refuses both.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from coincurve import PrivateKey, PublicKey

from schemas.codec import register_ext

__all__ = ["Q", "P_FIELD", "Point", "G", "InvalidPoint", "base_mul", "random_scalar", "scalar_bytes", "Rng"]

Q = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # group order q
P_FIELD = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F


class Rng(Protocol):
    """The randomness a round consumes; ``secrets.SystemRandom`` satisfies it."""

    def randbelow(self, n: int) -> int: ...

    def randbits(self, k: int) -> int: ...

    def randbytes(self, n: int) -> bytes: ...


class SystemRng:
    """Cryptographic randomness from the operating system."""

    def randbelow(self, n: int) -> int:
        return secrets.randbelow(n)

    def randbits(self, k: int) -> int:
        return secrets.randbits(k)

    def randbytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)


SYSTEM_RNG = SystemRng()


class InvalidPoint(ValueError):
    """Bytes that do not encode a point of the secp256k1 group (or encode the identity)."""


def scalar_bytes(k: int) -> bytes:
    return (k % Q).to_bytes(32, "big")


class Point:
    """An element of the secp256k1 group. Immutable."""

    __slots__ = ("_pk", "_enc")

    def __init__(self, pk: PublicKey | None) -> None:
        self._pk = pk
        self._enc = pk.format(compressed=True) if pk is not None else b"\x00"

    # construction -------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes) -> Point:
        """Parse a 33-byte compressed point; refuse off-curve encodings and the identity."""
        if not isinstance(data, (bytes, bytearray)) or len(data) != 33 or data[0] not in (2, 3):
            raise InvalidPoint("not a compressed secp256k1 point")
        try:
            return cls(PublicKey(bytes(data)))
        except ValueError as exc:
            raise InvalidPoint("point is not on secp256k1") from exc

    @classmethod
    def identity(cls) -> Point:
        return _IDENTITY

    # queries ------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        return self._pk is None

    def to_bytes(self) -> bytes:
        """33-byte compressed encoding; the identity encodes as a single zero byte."""
        return self._enc

    def x(self) -> int:
        """Affine x coordinate."""
        if self._pk is None:
            raise InvalidPoint("the identity has no affine coordinates")
        return int.from_bytes(self._enc[1:], "big")

    def y_is_odd(self) -> bool:
        if self._pk is None:
            raise InvalidPoint("the identity has no affine coordinates")
        return self._enc[0] == 3

    def public_key(self) -> PublicKey:
        if self._pk is None:
            raise InvalidPoint("the identity is not a public key")
        return self._pk

    # arithmetic ---------------------------------------------------------
    def __add__(self, other: Point) -> Point:
        if self._pk is None:
            return other
        if other._pk is None:
            return self
        if self._enc == other._enc:
            return self * 2
        try:
            return Point(PublicKey.combine_keys([self._pk, other._pk]))
        except ValueError:  # P + (-P)
            return _IDENTITY

    def __neg__(self) -> Point:
        if self._pk is None:
            return self
        return Point(PublicKey(bytes([self._enc[0] ^ 1]) + self._enc[1:]))

    def __sub__(self, other: Point) -> Point:
        return self + (-other)

    def __mul__(self, k: int) -> Point:
        k %= Q
        if k == 0 or self._pk is None:
            return _IDENTITY
        return Point(self._pk.multiply(k.to_bytes(32, "big")))

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and self._enc == other._enc

    def __hash__(self) -> int:
        return hash(self._enc)

    def __repr__(self) -> str:
        return f"Point({self._enc.hex()})"


_IDENTITY = Point(None)


def base_mul(k: int) -> Point:
    """k·G."""
    k %= Q
    if k == 0:
        return _IDENTITY
    return Point(PrivateKey(k.to_bytes(32, "big")).public_key)


G = base_mul(1)


def random_scalar(rng: Rng) -> int:
    """Uniform nonzero scalar."""
    return 1 + rng.randbelow(Q - 1)


def sum_points(points) -> Point:
    """Σ points, with the identity for an empty sum."""
    pks = [p._pk for p in points if p._pk is not None]
    if not pks:
        return _IDENTITY
    if len(pks) == 1:
        return Point(pks[0])
    encs = [pk.format() for pk in pks]
    if len(set(encs)) == len(encs):
        try:
            return Point(PublicKey.combine_keys(pks))
        except ValueError:
            return _IDENTITY
    total = _IDENTITY
    for p in pks:
        total = total + Point(p)
    return total


register_ext(Point, 16, Point.to_bytes, Point.from_bytes)
