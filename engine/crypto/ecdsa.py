"""ECDSA signatures over secp256k1: encoding, low-S normalisation, verification, recovery.

Pure helpers with no I/O. All curve arithmetic is done by libsecp256k1 through
coincurve; this module only handles encodings and range checks. DER parsing is
strict (BIP-66 style): any encoding other than the one canonical DER form is
rejected, so a signature has exactly one byte string.
"""

from __future__ import annotations

from dataclasses import dataclass

from coincurve import PublicKey

from engine.crypto.group import Q, Point

__all__ = [
    "HALF_Q",
    "Signature",
    "InvalidSignature",
    "der_encode",
    "der_decode",
    "is_low_s",
    "normalize",
    "recovery_id",
    "verify_digest",
    "verify_der",
    "recover",
]

HALF_Q = Q // 2

_SEQUENCE = 0x30
_INTEGER = 0x02


class InvalidSignature(ValueError):
    """A signature that does not parse, is out of range, or does not verify."""


def _in_range(k: object) -> bool:
    """k is an int (not a bool) in [1, q-1]."""
    return isinstance(k, int) and not isinstance(k, bool) and 1 <= k < Q


@dataclass(frozen=True)
class Signature:
    """An ECDSA signature (r, s) with its recovery id v.

    Raises :class:`InvalidSignature` on construction unless r and s are in
    [1, q-1] and v is in 0..3. The s value is kept as given; use
    :func:`normalize` to obtain the low-S form.
    """

    r: int
    s: int
    v: int

    def __post_init__(self) -> None:
        if not (_in_range(self.r) and _in_range(self.s)):
            raise InvalidSignature("r and s must be integers in [1, q-1]")
        if not isinstance(self.v, int) or isinstance(self.v, bool) or not 0 <= self.v <= 3:
            raise InvalidSignature("recovery id must be 0, 1, 2 or 3")

    def der(self) -> bytes:
        """Strict DER encoding of (r, s)."""
        return der_encode(self.r, self.s)

    def compact(self) -> bytes:
        """64 bytes: r || s, each 32-byte big-endian."""
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big")

    def recoverable(self) -> bytes:
        """65 bytes: r || s || v (the layout libsecp256k1's recovery module uses)."""
        return self.compact() + bytes([self.v])


# encodings --------------------------------------------------------------


def _der_int(k: int) -> bytes:
    body = k.to_bytes((k.bit_length() + 7) // 8, "big")
    if body[0] & 0x80:
        body = b"\x00" + body  # keep it positive
    return bytes([_INTEGER, len(body)]) + body


def der_encode(r: int, s: int) -> bytes:
    """DER ``SEQUENCE { INTEGER r, INTEGER s }``.

    Raises :class:`InvalidSignature` unless r and s are positive integers small
    enough for short-form lengths (anything in [1, q-1] is).
    """
    for k in (r, s):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidSignature("r and s must be positive integers")
    body = _der_int(r) + _der_int(s)
    if len(body) >= 0x80:
        raise InvalidSignature("r or s too large for a signature")
    return bytes([_SEQUENCE, len(body)]) + body


def _parse_int(data: bytes, pos: int) -> tuple[int, int]:
    """Parse one strict-DER positive INTEGER at ``pos``; return (value, next position)."""
    if pos + 2 > len(data) or data[pos] != _INTEGER:
        raise InvalidSignature("expected an INTEGER")
    length = data[pos + 1]
    if length == 0:
        raise InvalidSignature("empty INTEGER")
    if length & 0x80:
        raise InvalidSignature("long-form length inside a signature")
    start, end = pos + 2, pos + 2 + length
    if end > len(data):
        raise InvalidSignature("INTEGER runs past the end")
    body = data[start:end]
    if body[0] & 0x80:
        raise InvalidSignature("negative INTEGER")
    if length > 1 and body[0] == 0 and not body[1] & 0x80:
        raise InvalidSignature("INTEGER has superfluous leading zero")
    value = int.from_bytes(body, "big")
    if value == 0:
        raise InvalidSignature("INTEGER is zero")
    return value, end


def der_decode(data: bytes) -> tuple[int, int]:
    """Parse a strict-DER ECDSA signature into (r, s).

    Accepts only the canonical encoding: ``30 len 02 len r 02 len s`` with
    short-form lengths that match exactly, minimal positive integers (a 0x00
    pad only when the next byte has its top bit set), no zero values and no
    trailing bytes. It does not check r, s < q; :func:`verify_digest` does.

    Raises :class:`InvalidSignature` on anything else, including non-bytes input.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidSignature("signature must be bytes")
    data = bytes(data)
    if len(data) < 8:
        raise InvalidSignature("too short for a DER signature")
    if data[0] != _SEQUENCE:
        raise InvalidSignature("expected a SEQUENCE")
    if data[1] & 0x80:
        raise InvalidSignature("long-form length for a signature")
    if data[1] != len(data) - 2:
        raise InvalidSignature("SEQUENCE length does not match the data")
    r, pos = _parse_int(data, 2)
    s, pos = _parse_int(data, pos)
    if pos != len(data):
        raise InvalidSignature("bytes after the second INTEGER")
    return r, s


# low-S and recovery id --------------------------------------------------


def is_low_s(s: int) -> bool:
    """True iff s is in [1, q/2] (Bitcoin's non-malleable half)."""
    return _in_range(s) and s <= HALF_Q


def normalize(r: int, s: int, v: int) -> Signature:
    """The low-S form of (r, s, v): if s > q/2, s := q - s and bit 0 of v flips.

    Negating s negates the nonce point R, which flips the parity of its y
    coordinate, hence the flip of bit 0 of the recovery id.

    Raises :class:`InvalidSignature` if r, s are not in [1, q-1] or v not in 0..3.
    """
    sig = Signature(r, s, v)  # range checks
    if s > HALF_Q:
        return Signature(r, Q - s, v ^ 1)
    return sig


def recovery_id(R: Point, s_was_flipped: bool) -> int:
    """Recovery id for nonce point R: (R.y odd) | (R.x >= q) << 1, bit 0 flipped if s was negated.

    Raises :class:`~engine.crypto.group.InvalidPoint` if R is the identity.
    """
    v = int(R.y_is_odd()) | (int(R.x() >= Q) << 1)
    return v ^ 1 if s_was_flipped else v


# verification -----------------------------------------------------------


def _parse_public_key(public_key: object) -> PublicKey | None:
    """A coincurve key from a Point or SEC1 bytes (33 compressed or 65 uncompressed), else None."""
    if isinstance(public_key, Point):
        return None if public_key.is_identity else public_key.public_key()
    if not isinstance(public_key, (bytes, bytearray)):
        return None
    data = bytes(public_key)
    if not ((len(data) == 33 and data[0] in (2, 3)) or (len(data) == 65 and data[0] == 4)):
        return None  # also refuses libsecp256k1's "hybrid" 0x06/0x07 form
    try:
        return PublicKey(data)
    except (ValueError, TypeError):
        return None


def verify_digest(
    public_key: bytes | Point, digest: bytes, r: int, s: int, *, require_low_s: bool = False
) -> bool:
    """Check the ECDSA signature (r, s) on a 32-byte message hash.

    ``public_key`` is a :class:`Point` or SEC1 bytes (33-byte compressed or
    65-byte uncompressed). r and s must be in [1, q-1]. A high-S signature is
    accepted unless ``require_low_s``; it is normalised before libsecp256k1
    (which only accepts low-S) verifies it.

    Never raises: returns False for any invalid input, including a digest that
    is not 32 bytes, out-of-range r or s, and a key that does not parse.
    """
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
        return False
    if not (_in_range(r) and _in_range(s)):
        return False
    if s > HALF_Q:
        if require_low_s:
            return False
        s = Q - s
    key = _parse_public_key(public_key)
    if key is None:
        return False
    try:
        return key.verify(der_encode(r, s), bytes(digest), hasher=None)
    except (ValueError, TypeError):
        return False


def verify_der(public_key: bytes | Point, digest: bytes, der: bytes, *, require_low_s: bool = False) -> bool:
    """Strict-DER parse ``der`` (see :func:`der_decode`), then :func:`verify_digest`.

    Never raises: a signature that is not canonical DER gives False.
    """
    try:
        r, s = der_decode(der)
    except InvalidSignature:
        return False
    return verify_digest(public_key, digest, r, s, require_low_s=require_low_s)


def recover(digest: bytes, sig: Signature) -> Point:
    """The public key that ``sig`` (with its recovery id) verifies under for ``digest``.

    High-S signatures recover too, provided v matches that s.

    Raises :class:`InvalidSignature` if the digest is not 32 bytes, ``sig`` is
    not a :class:`Signature`, or no key can be recovered.
    """
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
        raise InvalidSignature("digest must be 32 bytes")
    if not isinstance(sig, Signature):
        raise InvalidSignature("expected a Signature")
    try:
        pk = PublicKey.from_signature_and_message(sig.recoverable(), bytes(digest), hasher=None)
    except ValueError as exc:
        raise InvalidSignature("public key recovery failed") from exc
    return Point(pk)


def is_releasable(public_key: bytes | Point, digest: bytes, r: int, s: int, v: int) -> bool:
    """The checks every released signature passes: it verifies under ``public_key``, is low-S,
    and its recovery id ``v`` recovers that same key."""
    if not verify_digest(public_key, digest, r, s, require_low_s=True):
        return False
    try:
        recovered = recover(digest, Signature(r, s, v))
    except (InvalidSignature, ValueError, TypeError):
        return False
    key = _parse_public_key(public_key)
    return key is not None and recovered.to_bytes() == key.format(compressed=True)
