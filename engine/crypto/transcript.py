"""Fiat–Shamir transcripts: unambiguous, domain-separated, length-prefixed.

Every item is written as ``label-length ‖ label ‖ kind ‖ value-length ‖ value``
with 4-byte big-endian lengths, after a domain tag of the same shape. Two
different sequences of (label, value) pairs therefore never encode to the same
bytes, which is what stops the TSSHOCK family of challenge-collision attacks:
there is no way to shift bytes from one public input into another.

Challenges are squeezed from SHAKE-256 over the encoding and sampled by
rejection, so they are exactly uniform in their range.

Callers MUST bind the execution id and the prover's party id (usually through
:func:`proof_context`) and every public input of the statement.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from engine.crypto.group import Q, Point

__all__ = ["Transcript", "proof_context"]

_KIND_BYTES = b"b"
_KIND_INT = b"i"
_KIND_STR = b"s"
_KIND_POINT = b"p"
_KIND_LIST = b"l"


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _int_bytes(v: int) -> bytes:
    v = int(v)
    sign = b"-" if v < 0 else b"+"
    mag = abs(v)
    return sign + mag.to_bytes((mag.bit_length() + 7) // 8, "big")


class Transcript:
    """An append-only Fiat–Shamir transcript."""

    __slots__ = ("_h",)

    def __init__(self, domain: str) -> None:
        self._h = hashlib.shake_256()
        tag = b"conclave/v1/" + domain.encode()
        self._h.update(_u32(len(tag)) + tag)

    def _put(self, label: str, kind: bytes, data: bytes) -> None:
        lb = label.encode()
        self._h.update(_u32(len(lb)) + lb + kind + _u32(len(data)) + data)

    def append(self, label: str, value: object) -> Transcript:
        """Append bytes, str, int (any sign or size), a Point, or a sequence of those."""
        if isinstance(value, (bytes, bytearray)):
            self._put(label, _KIND_BYTES, bytes(value))
        elif isinstance(value, str):
            self._put(label, _KIND_STR, value.encode())
        elif isinstance(value, Point):
            self._put(label, _KIND_POINT, value.to_bytes())
        elif isinstance(value, bool):
            raise TypeError("booleans are ambiguous in a transcript; encode them as ints")
        elif isinstance(value, int) or type(value).__name__ == "mpz":
            self._put(label, _KIND_INT, _int_bytes(value))
        elif isinstance(value, (list, tuple)):
            self._put(label, _KIND_LIST, _u32(len(value)))
            for i, item in enumerate(value):
                self.append(f"{label}[{i}]", item)
        else:
            raise TypeError(f"cannot put {type(value).__name__} in a transcript")
        return self

    def extend(self, items: Iterable[tuple[str, object]]) -> Transcript:
        for label, value in items:
            self.append(label, value)
        return self

    # challenges -------------------------------------------------------------
    def _stream(self, label: str, nbytes: int) -> bytes:
        h = self._h.copy()
        lb = label.encode()
        h.update(b"challenge" + _u32(len(lb)) + lb)
        return h.digest(nbytes)

    def _uniform(self, label: str, bound: int, count: int) -> list[int]:
        """``count`` uniform integers in [0, bound) by rejection sampling."""
        if bound <= 0:
            raise ValueError("bound must be positive")
        nbits = max(1, (bound - 1).bit_length())
        nbytes = (nbits + 7) // 8
        mask = (1 << nbits) - 1
        out: list[int] = []
        want = nbytes * count * 2 + 64
        attempt = 0
        while len(out) < count:
            stream = self._stream(f"{label}#{attempt}", want)
            for off in range(0, len(stream) - nbytes + 1, nbytes):
                v = int.from_bytes(stream[off : off + nbytes], "big") & mask
                if v < bound:
                    out.append(v)
                    if len(out) == count:
                        break
            attempt += 1
        return out

    def digest(self, nbytes: int = 32) -> bytes:
        """A hash commitment to everything appended so far."""
        return self._stream("digest", nbytes)

    def challenge_signed(self, bits: int, label: str = "e") -> int:
        """Uniform e in ±2^bits, i.e. [-2^bits, 2^bits]."""
        return self._uniform(label, (1 << (bits + 1)) + 1, 1)[0] - (1 << bits)

    def challenge_scalar(self, label: str = "e") -> int:
        """Uniform e in Z_q."""
        return self._uniform(label, Q, 1)[0]

    def challenge_bits(self, count: int, label: str = "e") -> list[int]:
        """``count`` independent uniform bits."""
        stream = self._stream(label, (count + 7) // 8)
        return [(stream[i // 8] >> (i % 8)) & 1 for i in range(count)]

    def challenge_mod(self, n: int, count: int, label: str = "y") -> list[int]:
        """``count`` uniform elements of Z_n."""
        return self._uniform(label, int(n), count)


def proof_context(execution_id: bytes, prover: int, *extra: bytes) -> bytes:
    """The shared ``state`` a proof binds: execution id, prover id, optional extras (e.g. ρ)."""
    parts = [execution_id, prover.to_bytes(4, "big"), *extra]
    return b"".join(_u32(len(p)) + p for p in parts)
