"""BIP-32 public (non-hardened) derivation for a threshold key.

In threshold custody nobody holds the private key, so only CKDpub can run, and only
non-hardened indices can be derived. Each child key is ``K + t·G`` for a public scalar
tweak ``t``, so the parties sign for the child with their existing shares shifted by ``t``
(with Shamir shares every party adds ``t``, since Lagrange coefficients sum to one).
:func:`derive` returns the child key together with that tweak.

Conclave's keygen produces no chain code, so :func:`chain_code` derives one publicly from
the key. Anyone who knows the public key can therefore compute every child address: the
chain code gives no unlinkability towards someone who sees the root public key. It does
not weaken the keys. BIP-32's warning that "xpub + one non-hardened child private key
reveals the parent private key" is also moot here, because child private keys never exist.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from coincurve import PublicKey

from engine.chains import compressed_pubkey
from engine.crypto.group import Q

__all__ = ["HARDENED", "MAX_DEPTH", "parse_path", "chain_code", "derive", "derive_for"]

HARDENED = 2**31  # indices at or above this need the parent private key
MAX_DEPTH = 255  # BIP-32 serialises depth in one byte

_CHAIN_CODE_TAG = b"conclave/bip32-chain-code/v1"
_INDEX = re.compile(r"(0|[1-9][0-9]*)")


def parse_path(path: str) -> tuple[int, ...]:
    """The indices of a non-hardened path: "m" -> (), "m/0/7" -> (0, 7).

    Raises ValueError for a hardened component ("0'", "0h", "0H"), an index of 2**31 or
    more, more than 255 levels, or anything else that is not "m" followed by "/index" parts.
    """
    if not isinstance(path, str):
        raise ValueError("path must be a string like 'm/0/7'")
    parts = path.split("/")
    if parts[0] != "m":
        raise ValueError(f"path {path!r} must start with 'm'")
    indices = []
    for part in parts[1:]:
        if part[-1:] in ("'", "h", "H"):
            raise ValueError(
                f"path {path!r}: hardened derivation needs the private key, "
                "which no party holds in threshold custody; use non-hardened indices"
            )
        if not _INDEX.fullmatch(part):
            raise ValueError(f"path {path!r}: component {part!r} is not a decimal index")
        indices.append(int(part))
    return _check_indices(indices, path)


def _check_indices(indices: Sequence[int], label: object) -> tuple[int, ...]:
    if len(indices) > MAX_DEPTH:
        raise ValueError(f"path {label!r} is deeper than {MAX_DEPTH} levels")
    for i in indices:
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"path {label!r}: index {i!r} is not a non-negative integer")
        if i >= HARDENED:
            raise ValueError(
                f"path {label!r}: index {i} is hardened; hardened derivation needs the "
                "private key, which no party holds in threshold custody"
            )
    return tuple(indices)



def chain_code(pubkey: bytes) -> bytes:
    """Conclave's public BIP-32 chain code for a root key: SHA-256(tag || pubkey).

    It is a function of the public key alone, so it is public. That costs only address
    unlinkability towards whoever knows the root public key, never key security.
    """
    return hashlib.sha256(_CHAIN_CODE_TAG + compressed_pubkey(pubkey)).digest()


def derive(pubkey: bytes, code: bytes, path: str | Sequence[int]) -> tuple[bytes, int]:
    """BIP-32 CKDpub along ``path``: (child compressed pubkey, tweak) with child = pubkey + tweak·G.

    The tweak is the sum of every step's I_L mod n. Path "m" (or an empty sequence) gives
    (pubkey, 0).

    Raises ValueError for a bad key, a chain code that is not 32 bytes, a hardened or
    malformed path, or the astronomically rare step where I_L >= n or the child is the
    point at infinity (BIP-32 says to skip to the next index; we refuse instead, so an
    index always means the same key).
    """
    key = compressed_pubkey(pubkey)
    if not isinstance(code, (bytes, bytearray)) or len(code) != 32:
        raise ValueError("code must be a 32-byte chain code")
    if isinstance(path, str):
        indices = parse_path(path)
    elif isinstance(path, Sequence) and not isinstance(path, (bytes, bytearray)):
        indices = _check_indices(list(path), path)
    else:
        raise ValueError("path must be a string like 'm/0/7' or a sequence of indices")
    code = bytes(code)
    tweak = 0
    for i in indices:
        digest = hmac.new(code, key + i.to_bytes(4, "big"), hashlib.sha512).digest()
        il, code = int.from_bytes(digest[:32], "big"), digest[32:]
        if il >= Q:
            raise ValueError(f"index {i} gives I_L >= n; use another index")
        try:
            key = PublicKey(key).add(il.to_bytes(32, "big")).format(compressed=True)
        except ValueError as exc:  # libsecp256k1 refuses a sum at infinity
            raise ValueError(f"index {i} gives the point at infinity; use another index") from exc
        tweak = (tweak + il) % Q
    return key, tweak


def derive_for(pubkey: bytes, path: str | None) -> tuple[bytes, int]:
    """Derive along ``path`` with Conclave's public :func:`chain_code`; None means the root key."""
    if path is None:
        return compressed_pubkey(pubkey), 0
    return derive(pubkey, chain_code(pubkey), path)
